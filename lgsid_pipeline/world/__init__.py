"""The embedded world: a seeded generator of cities, items and users with local-life structure
(generator: the public entry points, composed from config, geography, vocab, spatial, items,
users and statistics), its category vocabulary (categories) and the real US places it draws
cities from (gazetteer)."""
