"""Serving: the export and in-memory index behind `lgsid serve` (index) and SID lookups (lookup)."""
