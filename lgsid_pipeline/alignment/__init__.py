"""Alignment, the paper's Sec. 3.1: prompts (Eq. 1, Appendix A), distance-ranked negatives (Eq. 1, 3),
co-occurrence pairs (Eq. 5), the list-wise reward model (Eq. 2-4), G-DPO (Eq. 6-8), the text
encoder, the alignment report's metrics, the one composition the assets and the ladder share
(stage) and the Table 3 ladder."""
