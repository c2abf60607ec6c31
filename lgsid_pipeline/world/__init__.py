"""The embedded world: a seeded generator of cities, items and users with local-life structure
(generator), its category vocabulary (categories) and the real US places it draws cities from
(gazetteer)."""
