"""The local-life category tree of the synthetic world, with names, prices and goods per leaf.

Three levels (cat1 > cat2 > cat3), e.g. ``Food > Chinese > Hot Pot``,
``Services > Beauty > Nail Salon``. Each leaf carries:

- ``weight``: its share of the catalog (relative; Food dominates, as on local-life platforms);
- ``chain``: how often its shops belong to a chain (relative affinity, coffee and burgers high);
- ``price``: median price per person in USD;
- ``suffixes``: shop-type nouns used in generated names ("Hot Pot", "Noodle House");
- ``goods``: the goods / menu the shop may list (the paper's "full goods list").

Each cat2 has a pool of name words with the right flavour ("Dragon", "Jade" for Chinese;
"Sakura" for Japanese); ``COMMON_WORDS`` are shared by all.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Leaf:
    cat1: str
    cat2: str
    cat3: str
    weight: float
    chain: float
    price: float
    suffixes: tuple[str, ...]
    goods: tuple[str, ...]


def _leaf(path: str, weight: float, chain: float, price: float, suffixes: str, goods: str) -> Leaf:
    c1, c2, c3 = (p.strip() for p in path.split(">"))
    return Leaf(c1, c2, c3, weight, chain, price,
                tuple(s.strip() for s in suffixes.split("|")),
                tuple(g.strip() for g in goods.split(",")))


LEAVES: tuple[Leaf, ...] = (
    # ---- Food
    _leaf("Food > Chinese > Hot Pot", 3, 0.8, 32, "Hot Pot|Hot Pot House|Shabu",
          "Spicy Broth Base, Mushroom Broth, Sliced Beef, Lamb Rolls, Tofu Skin, Fish Balls, "
          "Enoki Mushrooms, Napa Cabbage, Shrimp Paste, Handmade Noodles, Sesame Sauce, Quail Eggs"),
    _leaf("Food > Chinese > Sichuan", 2, 0.3, 24, "Sichuan Kitchen|Szechuan House|Spice House",
          "Mapo Tofu, Kung Pao Chicken, Dan Dan Noodles, Twice-Cooked Pork, Dry-Fried Green Beans, "
          "Fish in Chili Oil, Cumin Lamb, Wontons in Chili Oil, Fried Rice, Hot and Sour Soup"),
    _leaf("Food > Chinese > Dim Sum", 2, 0.3, 22, "Dim Sum|Tea House|Dim Sum Palace",
          "Har Gow, Siu Mai, Char Siu Bao, Egg Tarts, Rice Noodle Rolls, Turnip Cake, "
          "Chicken Feet, Sticky Rice in Lotus Leaf, Jasmine Tea, Custard Buns"),
    _leaf("Food > Chinese > Noodles & Dumplings", 3, 0.6, 15, "Noodle House|Dumpling House|Noodle Bar",
          "Hand-Pulled Beef Noodles, Pork Dumplings, Soup Dumplings, Scallion Pancake, "
          "Chive Dumplings, Zhajiang Noodles, Wonton Soup, Cucumber Salad, Potstickers"),
    _leaf("Food > Japanese > Sushi", 3, 0.4, 30, "Sushi|Sushi Bar|Sushi House",
          "Salmon Nigiri, Tuna Roll, California Roll, Spicy Tuna Roll, Eel Avocado Roll, "
          "Sashimi Platter, Miso Soup, Edamame, Seaweed Salad, Dragon Roll, Yellowtail Nigiri"),
    _leaf("Food > Japanese > Ramen", 3, 0.7, 17, "Ramen|Ramen Bar|Noodle Shop",
          "Tonkotsu Ramen, Shoyu Ramen, Miso Ramen, Spicy Ramen, Gyoza, Chashu Bowl, "
          "Karaage, Ajitama Egg, Takoyaki, Vegetable Ramen"),
    _leaf("Food > Japanese > Izakaya", 1, 0.2, 35, "Izakaya|Robata|Tavern",
          "Yakitori, Agedashi Tofu, Karaage, Grilled Mackerel, Okonomiyaki, Sake Flight, "
          "Highball, Takoyaki, Edamame, Tempura Platter"),
    _leaf("Food > BBQ & Grilled > Korean BBQ", 2, 0.5, 38, "Korean BBQ|BBQ House|Grill House",
          "Galbi, Bulgogi, Pork Belly, Beef Brisket, Spicy Pork, Kimchi Stew, Steamed Egg, "
          "Banchan Set, Japchae, Seafood Pancake, Cold Noodles"),
    _leaf("Food > BBQ & Grilled > Smokehouse BBQ", 2, 0.4, 22, "BBQ|Smokehouse|Pit BBQ",
          "Brisket, Pulled Pork, Baby Back Ribs, Burnt Ends, Smoked Sausage, Mac and Cheese, "
          "Coleslaw, Cornbread, Baked Beans, Smoked Turkey"),
    _leaf("Food > BBQ & Grilled > Steakhouse", 2, 0.5, 60, "Steakhouse|Chophouse|Grill",
          "Ribeye, Filet Mignon, New York Strip, T-Bone, Creamed Spinach, Loaded Baked Potato, "
          "Caesar Salad, Shrimp Cocktail, Onion Rings, Cheesecake"),
    _leaf("Food > Fast Food > Burgers", 4, 2.5, 12, "Burgers|Burger Joint|Burger Bar",
          "Cheeseburger, Double Burger, Bacon Burger, Veggie Burger, French Fries, Onion Rings, "
          "Milkshake, Chicken Sandwich, Soft Drink, Tater Tots"),
    _leaf("Food > Fast Food > Fried Chicken", 3, 2.5, 11, "Chicken|Fried Chicken|Chicken Shack",
          "Fried Chicken Bucket, Chicken Tenders, Spicy Wings, Chicken Sandwich, Biscuits, "
          "Mashed Potatoes, Coleslaw, Mac and Cheese, Sweet Tea, Corn on the Cob"),
    _leaf("Food > Fast Food > Sandwiches & Subs", 3, 2.5, 11, "Subs|Deli|Sandwich Shop",
          "Italian Sub, Turkey Club, Meatball Sub, Philly Cheesesteak, BLT, Tuna Melt, "
          "Chips, Pickles, Chicken Caesar Wrap, Veggie Sub"),
    _leaf("Food > Pizza & Italian > Pizza", 4, 2.0, 14, "Pizza|Pizzeria|Pizza Co.",
          "Margherita Pizza, Pepperoni Pizza, Supreme Pizza, Garlic Knots, Buffalo Wings, "
          "Calzone, Caesar Salad, Cheese Pizza, Hawaiian Pizza, Cannoli"),
    _leaf("Food > Pizza & Italian > Trattoria", 2, 0.3, 34, "Trattoria|Ristorante|Italian Kitchen",
          "Spaghetti Carbonara, Lasagna, Chicken Parmesan, Fettuccine Alfredo, Risotto, "
          "Bruschetta, Tiramisu, Minestrone, Osso Buco, Gnocchi"),
    _leaf("Food > Mexican > Tacos", 3, 1.2, 12, "Tacos|Taqueria|Taco Shop",
          "Carne Asada Tacos, Al Pastor Tacos, Fish Tacos, Carnitas Tacos, Chips and Salsa, "
          "Guacamole, Elote, Horchata, Quesadilla, Churros"),
    _leaf("Food > Mexican > Tex-Mex", 2, 0.8, 18, "Cantina|Tex-Mex Grill|Mexican Grill",
          "Fajitas, Enchiladas, Burrito Bowl, Queso Dip, Nachos, Chimichanga, Margarita, "
          "Tamales, Refried Beans, Sopapillas"),
    _leaf("Food > Asian Fusion > Thai", 2, 0.3, 18, "Thai Kitchen|Thai Cuisine|Thai Bistro",
          "Pad Thai, Green Curry, Tom Yum Soup, Drunken Noodles, Massaman Curry, Mango Sticky Rice, "
          "Thai Iced Tea, Spring Rolls, Papaya Salad, Basil Fried Rice"),
    _leaf("Food > Asian Fusion > Vietnamese Pho", 2, 0.3, 15, "Pho|Pho House|Vietnamese Kitchen",
          "Beef Pho, Chicken Pho, Banh Mi, Vermicelli Bowl, Spring Rolls, Broken Rice, "
          "Vietnamese Iced Coffee, Bun Bo Hue, Egg Rolls, Lemongrass Chicken"),
    _leaf("Food > Asian Fusion > Indian Curry", 2, 0.3, 20, "Curry House|Tandoor|Indian Kitchen",
          "Chicken Tikka Masala, Butter Chicken, Lamb Vindaloo, Garlic Naan, Samosas, "
          "Palak Paneer, Chana Masala, Biryani, Mango Lassi, Dal Makhani"),
    _leaf("Food > Breakfast & Brunch > Diner", 2, 0.8, 14, "Diner|Family Restaurant|Grill",
          "Pancakes, Eggs and Bacon, Hash Browns, Omelette, French Toast, Biscuits and Gravy, "
          "Patty Melt, Coffee, Milkshake, Club Sandwich"),
    _leaf("Food > Breakfast & Brunch > Bagels", 1, 1.0, 9, "Bagels|Bagel Shop|Bagel Bakery",
          "Everything Bagel, Lox Bagel, Egg and Cheese Bagel, Cream Cheese, Bacon Egg Bagel, "
          "Coffee, Orange Juice, Plain Bagel, Sesame Bagel"),
    _leaf("Food > Cafes & Desserts > Coffee Shop", 4, 3.0, 7, "Coffee|Coffee House|Cafe|Espresso Bar",
          "Latte, Cappuccino, Cold Brew, Americano, Mocha, Croissant, Blueberry Muffin, "
          "Chai Latte, Iced Coffee, Breakfast Sandwich, Matcha Latte"),
    _leaf("Food > Cafes & Desserts > Bakery", 2, 0.8, 8, "Bakery|Bake Shop|Patisserie",
          "Sourdough Loaf, Croissant, Cinnamon Roll, Baguette, Chocolate Chip Cookie, "
          "Fruit Tart, Birthday Cake, Scone, Danish, Macarons"),
    _leaf("Food > Cafes & Desserts > Bubble Tea", 2, 2.0, 7, "Tea|Boba|Tea House",
          "Brown Sugar Boba Milk, Taro Milk Tea, Mango Green Tea, Matcha Milk Tea, "
          "Passion Fruit Tea, Strawberry Smoothie, Lychee Jelly Tea, Thai Milk Tea, Oolong Milk Tea"),
    _leaf("Food > Cafes & Desserts > Ice Cream", 2, 1.5, 7, "Creamery|Ice Cream|Frozen Yogurt",
          "Vanilla Cone, Chocolate Sundae, Banana Split, Mint Chip Scoop, Cookie Dough Scoop, "
          "Frozen Yogurt Cup, Milkshake, Waffle Cone, Sorbet"),
    # ---- Entertainment
    _leaf("Entertainment > Nightlife > Cocktail Bar", 2, 0.2, 28, "Lounge|Cocktail Bar|Social Club",
          "Old Fashioned, Negroni, Margarita, Espresso Martini, Mojito, Whiskey Sour, "
          "Gin and Tonic, Charcuterie Board, Truffle Fries"),
    _leaf("Entertainment > Nightlife > Brewery", 2, 0.4, 20, "Brewing Co.|Brewery|Taproom",
          "IPA Flight, Hazy IPA, Stout, Pilsner, Sour Ale, Pretzel Bites, Beer Cheese, "
          "Growler Fill, Wheat Beer"),
    _leaf("Entertainment > Nightlife > Sports Bar", 2, 0.9, 20, "Sports Bar|Tavern|Pub",
          "Buffalo Wings, Draft Beer, Nachos, Sliders, Mozzarella Sticks, Loaded Fries, "
          "Bucket of Beers, Burger, Quesadilla"),
    _leaf("Entertainment > Games > Karaoke", 1, 0.6, 25, "Karaoke|KTV|Sing Box",
          "Private Room per Hour, Party Package, Fruit Platter, Fried Snacks Combo, "
          "Soft Drinks Pitcher, Birthday Package, Beer Bucket"),
    _leaf("Entertainment > Games > Bowling", 1, 1.0, 18, "Lanes|Bowl|Bowling Center",
          "Lane per Hour, Shoe Rental, Pizza and Bowling Package, Arcade Card, Nachos, "
          "Pitcher of Soda, Birthday Party Package, Glow Bowling"),
    _leaf("Entertainment > Games > Escape Room", 1, 0.8, 30, "Escape Rooms|Escape Games|Puzzle Rooms",
          "Heist Room Ticket, Haunted House Room, Pirate Room, Team Building Package, "
          "Private Booking, Gift Card, Kids Adventure Room"),
    _leaf("Entertainment > Games > Arcade", 1, 1.2, 15, "Arcade|Game Zone|Fun Center",
          "Game Card 50 Credits, Game Card 100 Credits, VR Experience, Laser Tag, "
          "Prize Counter, Pizza Combo, Party Package"),
    _leaf("Entertainment > Movies & Shows > Cinema", 2, 2.0, 16, "Cinemas|Theater|Movie House",
          "Standard Ticket, IMAX Ticket, 3D Ticket, Large Popcorn, Nachos, Fountain Drink, "
          "Matinee Ticket, Recliner Seat, Candy Combo"),
    _leaf("Entertainment > Movies & Shows > Live Music", 1, 0.2, 30, "Music Hall|Jazz Club|Live House",
          "General Admission, VIP Table, Jazz Night Ticket, Cocktail Special, Open Mic Entry, "
          "Season Pass, Tapas Plate"),
    _leaf("Entertainment > Active Fun > Trampoline Park", 1, 1.5, 20, "Trampoline Park|Jump Zone|Air Park",
          "One Hour Jump, Two Hour Jump, Grip Socks, Toddler Time, Dodgeball Session, "
          "Birthday Package, Annual Pass"),
    _leaf("Entertainment > Active Fun > Mini Golf", 1, 0.8, 12, "Mini Golf|Putt Putt|Golf Fun",
          "18-Hole Round, Family Pack, Glow Golf, Ice Cream Cone, Batting Cage Tokens, Go-Kart Ride"),
    # ---- Services
    _leaf("Services > Beauty > Nail Salon", 3, 0.6, 35, "Nails|Nail Salon|Nail Spa|Nail Bar",
          "Gel Manicure, Classic Manicure, Spa Pedicure, Acrylic Full Set, Nail Art, "
          "Dip Powder, Polish Change, Paraffin Treatment, Gel Removal"),
    _leaf("Services > Beauty > Hair Salon", 3, 0.8, 45, "Hair Studio|Salon|Hair Design",
          "Women's Haircut, Men's Haircut, Balayage, Root Color, Highlights, Blowout, "
          "Keratin Treatment, Kids Haircut, Deep Conditioning"),
    _leaf("Services > Beauty > Barbershop", 2, 0.6, 25, "Barbershop|Barber Co.|Cuts",
          "Classic Cut, Skin Fade, Beard Trim, Hot Towel Shave, Kids Cut, Line Up, Hair and Beard Combo"),
    _leaf("Services > Beauty > Spa & Massage", 2, 0.7, 70, "Day Spa|Massage|Wellness Spa",
          "Swedish Massage, Deep Tissue Massage, Hot Stone Massage, Foot Reflexology, Facial, "
          "Couples Massage, Body Scrub, Aromatherapy"),
    _leaf("Services > Fitness > Gym", 2, 2.0, 30, "Fitness|Gym|Athletic Club",
          "Monthly Membership, Day Pass, Personal Training Session, Group Class, "
          "Annual Membership, Sauna Access, Towel Service"),
    _leaf("Services > Fitness > Yoga Studio", 2, 0.6, 22, "Yoga|Yoga Studio|Hot Yoga",
          "Drop-In Class, Hot Yoga Class, Ten Class Pack, Monthly Unlimited, Pilates Mat Class, "
          "Meditation Session, Mat Rental"),
    _leaf("Services > Fitness > Martial Arts", 1, 0.5, 25, "Martial Arts|Karate|Jiu-Jitsu Academy",
          "Kids Karate Class, Brazilian Jiu-Jitsu Class, Kickboxing Class, Trial Week, "
          "Monthly Membership, Private Lesson, Uniform"),
    _leaf("Services > Health > Dental Clinic", 2, 0.7, 120, "Dental|Family Dentistry|Dental Care",
          "Cleaning and Exam, Teeth Whitening, Filling, Crown, Invisalign Consultation, "
          "Emergency Visit, X-Rays, Root Canal"),
    _leaf("Services > Health > Optometrist", 1, 1.0, 90, "Eye Care|Optical|Vision Center",
          "Eye Exam, Contact Lens Fitting, Designer Frames, Prescription Sunglasses, "
          "Blue Light Lenses, Kids Eye Exam"),
    _leaf("Services > Home & Auto > Laundry & Dry Cleaning", 2, 0.6, 15, "Cleaners|Laundromat|Dry Cleaning",
          "Wash and Fold per Pound, Shirt Laundering, Suit Dry Cleaning, Alterations, "
          "Comforter Cleaning, Same-Day Service, Pickup and Delivery"),
    _leaf("Services > Home & Auto > Car Wash", 2, 1.5, 15, "Car Wash|Auto Spa|Express Wash",
          "Basic Wash, Deluxe Wash, Interior Detail, Full Detail, Monthly Wash Club, "
          "Ceramic Coating, Tire Shine"),
    _leaf("Services > Home & Auto > Auto Repair", 2, 1.2, 90, "Auto Repair|Auto Care|Garage",
          "Oil Change, Brake Service, Tire Rotation, Battery Replacement, Engine Diagnostics, "
          "Alignment, AC Recharge, State Inspection"),
    _leaf("Services > Pets > Pet Grooming", 1, 0.8, 55, "Pet Grooming|Dog Spa|Grooming",
          "Full Groom Small Dog, Full Groom Large Dog, Bath and Brush, Nail Trim, Teeth Brushing, "
          "Cat Grooming, De-Shedding Treatment"),
    _leaf("Services > Pets > Veterinary", 1, 0.8, 80, "Animal Hospital|Veterinary Clinic|Pet Clinic",
          "Wellness Exam, Vaccinations, Dental Cleaning, Spay and Neuter, Microchipping, "
          "Flea Treatment, Emergency Visit"),
    # ---- Retail
    _leaf("Retail > Grocery > Supermarket", 2, 2.5, 40, "Market|Foods|Grocery",
          "Fresh Produce, Organic Milk, Rotisserie Chicken, Deli Meats, Bakery Bread, "
          "Eggs, Frozen Pizza, Cereal, Coffee Beans, Cut Flowers"),
    _leaf("Retail > Grocery > Asian Grocery", 1, 0.8, 35, "Asian Market|Oriental Market|Grocery",
          "Jasmine Rice, Soy Sauce, Instant Noodles, Tofu, Bok Choy, Frozen Dumplings, "
          "Kimchi, Chili Oil, Rice Crackers, Green Tea"),
    _leaf("Retail > Grocery > Convenience Store", 2, 2.5, 8, "Mart|Quick Stop|Convenience",
          "Snacks, Energy Drink, Coffee, Lottery Tickets, Hot Dog, Ice, Candy, Phone Charger, Soda"),
    _leaf("Retail > Fashion > Clothing Boutique", 2, 0.8, 45, "Boutique|Clothing Co.|Apparel",
          "Denim Jeans, Summer Dress, Graphic Tee, Linen Shirt, Knit Sweater, Leather Belt, "
          "Tote Bag, Sunglasses, Jacket"),
    _leaf("Retail > Fashion > Shoe Store", 1, 1.5, 70, "Shoes|Footwear|Shoe Co.",
          "Running Shoes, Sneakers, Leather Boots, Sandals, Dress Shoes, Kids Shoes, Insoles, Socks"),
    _leaf("Retail > Home & Garden > Florist", 1, 0.4, 45, "Florist|Flowers|Flower Shop",
          "Rose Bouquet, Sympathy Arrangement, Wedding Bouquet, Potted Orchid, Succulent Pot, "
          "Seasonal Bouquet, Corsage, Same-Day Delivery"),
    _leaf("Retail > Home & Garden > Hardware Store", 1, 1.5, 30, "Hardware|Home Supply|Tools",
          "Paint, Power Drill, Key Cutting, Light Bulbs, Garden Hose, Potting Soil, "
          "Screws and Nails, Ladder, Propane Exchange"),
    _leaf("Retail > Books & Hobbies > Bookstore", 1, 0.6, 20, "Books|Bookshop|Book Nook",
          "New Releases, Used Paperbacks, Children's Books, Graphic Novels, Cookbooks, "
          "Journals, Greeting Cards, Book Club Picks"),
    _leaf("Retail > Books & Hobbies > Toy & Game Store", 1, 0.8, 30, "Toys|Games|Toy Shop",
          "Board Games, Puzzles, Building Sets, Trading Cards, Stuffed Animals, Model Kits, "
          "Card Game Night, Dice Sets"),
)

COMMON_WORDS: tuple[str, ...] = (
    "Golden", "Lucky", "Royal", "Happy", "Blue", "Sunny", "Main Street", "Corner", "Urban",
    "Old Town", "Maple", "Oak", "Riverside", "Lakeside", "Harbor", "Summit", "Liberty",
    "Silver", "Red Door", "Green Leaf", "Little", "Big", "Prime", "Union", "Heritage",
    "Evergreen", "Cedar", "North Star", "Brick House", "Crown", "Copper", "Velvet",
)

CAT2_WORDS: dict[str, tuple[str, ...]] = {
    "Chinese": ("Dragon", "Jade", "Panda", "Lotus", "Bamboo", "Great Wall", "Peking", "Mandarin",
                "Red Lantern", "Phoenix", "Szechuan", "Dynasty", "Ming", "Canton", "Golden Wok"),
    "Japanese": ("Sakura", "Tokyo", "Zen", "Koi", "Fuji", "Kyoto", "Osaka", "Hana", "Kaze",
                 "Ichiban", "Umami", "Shogun", "Yuzu", "Tsuki"),
    "BBQ & Grilled": ("Smoky", "Hickory", "Ember", "Firewood", "Iron Grill", "Seoul", "Gangnam",
                      "Ranch", "Prime Cut", "Longhorn", "Charcoal", "Mesquite"),
    "Fast Food": ("Quick", "Rocket", "Snappy", "Big Bite", "Crispy", "Yum", "Top Dog", "Express",
                  "Hometown", "Stackhouse", "Golden Fry"),
    "Pizza & Italian": ("Bella", "Roma", "Luigi's", "Napoli", "Tuscany", "Mama Rosa's", "Sicilia",
                        "Vesuvio", "Venezia", "Nonna's", "Milano", "Pomodoro"),
    "Mexican": ("El Sol", "La Casa", "Azteca", "Don Pedro's", "Casa Jalisco", "El Toro",
                "La Palma", "Maya", "Oaxaca", "Los Amigos", "Fiesta"),
    "Asian Fusion": ("Bangkok", "Saigon", "Siam", "Mekong", "Bombay", "Taj", "Lemongrass",
                     "Basil", "Spice Route", "Orchid", "Curry Leaf", "Jasmine"),
    "Breakfast & Brunch": ("Sunrise", "Early Bird", "Morning Glory", "Rooster", "Griddle",
                           "Skillet", "Buttermilk", "Daybreak", "Pancake"),
    "Cafes & Desserts": ("Bean", "Brew", "Daily Grind", "Sweet", "Sugar", "Honey", "Velvet Cup",
                         "Cloud", "Whisk", "Crumb", "Frost", "Caramel", "Steam"),
    "Nightlife": ("Tipsy", "Barrel", "Hops", "Night Owl", "Speakeasy", "Anchor", "Rusty Nail",
                  "Tap", "Lantern", "Midnight", "Half Pint"),
    "Games": ("Strike", "Pixel", "Level Up", "Game On", "Neon", "Star", "Puzzle", "Mystery",
              "Encore", "Jackpot"),
    "Movies & Shows": ("Regal", "Grand", "Majestic", "Marquee", "Starlight", "Paramount",
                       "Bijou", "Encore", "Odeon"),
    "Active Fun": ("Bounce", "Jump", "Sky High", "Fun Zone", "Adventure", "Wild", "Putt"),
    "Beauty": ("Luxe", "Glow", "Polished", "Serenity", "Bella", "Chic", "Radiance", "Lotus",
               "Pure", "Bliss", "Elegance", "Gentleman's", "Sharp"),
    "Fitness": ("Iron", "Flex", "Peak", "Core", "Pulse", "Zen", "Warrior", "Titan", "Balance",
                "Dragon"),
    "Health": ("Bright", "Smile", "Family", "ClearView", "Gentle", "Care", "Pacific", "Vista"),
    "Home & Auto": ("Sparkle", "Fresh", "Pro", "Quick Lane", "Precision", "Shine", "Trusty",
                    "Spotless", "Reliable"),
    "Pets": ("Paws", "Happy Tails", "Furry Friends", "Wag", "Bark", "Whiskers", "Pet Pal"),
    "Grocery": ("Fresh", "Farm", "Harvest", "Green Valley", "Asia", "Good Earth", "Daily", "Pantry",
                "Neighborhood", "Sun"),
    "Fashion": ("Threads", "Style", "Loft", "Thread & Co", "Vogue", "Urban Thread", "Stride",
                "Sole", "Denim"),
    "Home & Garden": ("Bloom", "Petal", "Garden", "Handy", "Toolbox", "Blossom", "Green Thumb"),
    "Books & Hobbies": ("Chapter", "Page", "Inkwell", "Quill", "Story", "Dragon's Den", "Meeple"),
}
