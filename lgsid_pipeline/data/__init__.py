"""Source to catalog: reading a dataset (sources) and validating items and interactions into the
catalog schema, with rejected rows quarantined (catalog)."""
