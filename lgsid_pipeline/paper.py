"""The paper's printed experiment settings (Appendix B), in one table.

Every default of the project that comes from Appendix B reads its value from here, and every
place where the project departs from the paper says so here, with the value it uses and why.
``tests/test_paper_settings.py`` resolves each row's ``homes`` (the dataclass fields and
function parameters that hold the default) and fails if any of them disagrees with the row, so
this table cannot drift from the code. docs/ARCHITECTURE.md renders it.

Quotes are from "Appendix B: Experiment Settings" (Finetune Settings and Parameters Settings).
"""

from __future__ import annotations

from dataclasses import dataclass

# -- values that follow the paper (module constants so the defaults can cite them) -----------
NEGATIVES_PER_POSITIVE = 15  # reward lists: one positive + 15 negatives (Eq. 1, 3)
REWARD_MLP_LINEAR_LAYERS = 2  # R is "a two-layer MLP" (Eq. 2)
LORA_RANK = 8
LORA_DROPOUT = 0.05
LORA_TARGETS = ("key", "value")  # "fine-tuning only the key and value layers"
DPO_BETA = 0.9  # Eq. 6
COOCCURRENCE_THRESHOLD = 1200  # Eq. 5's s_th on the paper's 50M interactions
DMIX_FAR_PER_SAMPLE = 1  # "randomly select one negative item per sample"
DIN_EMBED_DIM = 8
DIN_TOWER = (32, 16)  # "[32, 16, 1]": the hidden layers; the final unit is the output
DIN_LR_STEP = 500  # StepLR every 500 steps ...
DIN_LR_GAMMA = 0.9  # ... by a factor of 0.9
DIN_NEGATIVE_RATIO = 4  # "negatives are down-sampled at a 1:4 ratio"
EVAL_KS = (5, 10)  # NDCG@K and Hit@K

# -- values where the project departs (the value used, next to the paper's) ------------------
SIM_LAMBDA = 0.2  # the paper prints 155; see the table
DIN_LR = 5e-3  # the paper: 0.1
DIN_BATCH = 1024  # the paper: 10,240
ENCODER_MAX_LENGTH = 128  # the paper: 512 (we pad to the batch's longest item, never to the cap)
ENCODER_POOLING = "mean"  # the paper: the last token's hidden state


@dataclass(frozen=True)
class Setting:
    name: str
    paper: object  # the value as printed
    quote: str  # Appendix B's words
    ours: object  # the project's default
    homes: tuple[str, ...] = ()  # "module:Class.field" or "module:function.param" holding the default
    why: str = ""  # for a departure: the reason

    @property
    def follows_paper(self) -> bool:
        return self.ours == self.paper


APPENDIX_B: tuple[Setting, ...] = (
    Setting("negatives per positive (K)", 15, "each positive sample is paired with 15 negative samples to "
            "construct list-wise inputs for the reward model", NEGATIVES_PER_POSITIVE,
            ("lgsid_pipeline.alignment.stage:NegativeSettings.k", "lgsid_pipeline.alignment.negatives:distance_ranked_negatives.k",
             "assets.signals:NegativesConfig.k")),
    Setting("reward model layers", 2, "a two-layer MLP with a sigmoid activation", REWARD_MLP_LINEAR_LAYERS,
            ("lgsid_pipeline.alignment.reward:RewardModel",),
            why="Two linear layers as printed. The hidden activation is GELU; the sigmoid is applied to R's "
                "score inside Eq. 4's loss (docs/alignment.md)."),
    Setting("LoRA rank", 8, "LoRA with a rank of 8", LORA_RANK,
            ("lgsid_pipeline.alignment.gdpo:GDPOConfig.lora_r", "assets.alignment:AlignedEncoderConfig.lora_r")),
    Setting("LoRA dropout", 0.05, "a dropout rate of 0.05", LORA_DROPOUT,
            ("lgsid_pipeline.alignment.gdpo:GDPOConfig.lora_dropout", "assets.alignment:AlignedEncoderConfig.lora_dropout")),
    Setting("LoRA target modules", ("key", "value"), "fine-tuning only the key and value layers", LORA_TARGETS,
            ("lgsid_pipeline.alignment.gdpo_policy:LORA_TARGETS",)),
    Setting("beta (Eq. 6)", 0.9, "In the DPO loss, we set beta=0.9", DPO_BETA,
            ("lgsid_pipeline.alignment.gdpo:GDPOConfig.beta", "assets.alignment:AlignedEncoderConfig.beta")),
    Setting("lambda (Eq. 8)", 155, "use Euclidean distance for the similarity constraint with a weight of "
            "lambda=155", SIM_LAMBDA,
            ("lgsid_pipeline.alignment.gdpo:GDPOConfig.lam", "assets.alignment:AlignedEncoderConfig.lam"),
            why="Table 6 sweeps 1.0-1.8 and Appendix B prints 155: two scales of L_sim. On L2-normalised "
                "embeddings Eq. 7 is bounded in [-4, 4] and any lambda above about 1 freezes the policy at "
                "the reference. 0.2 was chosen by the sweep on held-out validation items "
                "(benchmarks/RESULTS.md, 'Default lambda' and 'One alignment stage')."),
    Setting("co-occurrence threshold s_th (Eq. 5)", 1200, "we filter samples using a co-occurrence score "
            "threshold of 1200", COOCCURRENCE_THRESHOLD, ("lgsid_pipeline.alignment.cooccurrence:PAPER_S_TH",),
            why="1200 is the cap. The default scales it with the data, floor(1200 * interactions / 50M), "
                "clipped to [1, 1200], since 1200 co-clicks never occur on a city of a public data set "
                "(cooccurrence.default_threshold)."),
    Setting("far items per D_mix sample", 1, "randomly select one negative item per sample to construct the "
            "training pairs", DMIX_FAR_PER_SAMPLE, ("lgsid_pipeline.alignment.preference_pairs:build_preference_pairs.n_gc_per_item",)),
    Setting("DIN embedding size per feature", 8, "We set the embedding dimension for each feature to 8",
            DIN_EMBED_DIM, ("lgsid_pipeline.recommenders.din:DINConfig.embed_dim",)),
    Setting("DIN tower", (32, 16), "the predict MLP tower dimensions configured as [32, 16, 1]", DIN_TOWER,
            ("lgsid_pipeline.recommenders.din:DINConfig.mlp",)),
    Setting("DIN learning rate", 0.1, "applying learning rates of 0.1", DIN_LR,
            ("lgsid_pipeline.recommenders.din:DINConfig.lr",),
            why="0.1 goes with batches of 10,240 on 50M samples; at batch 1,024 on thousands of samples it "
                "is far too large (docs/evaluation.md). 5e-3 is the conventional Adam scale, not tuned on "
                "any benchmark."),
    Setting("DIN StepLR step", 500, "decays the learning rate by a factor of 0.9 every 500 steps", DIN_LR_STEP,
            ("lgsid_pipeline.recommenders.din:DINConfig.step_size",)),
    Setting("DIN StepLR factor", 0.9, "decays the learning rate by a factor of 0.9 every 500 steps",
            DIN_LR_GAMMA, ("lgsid_pipeline.recommenders.din:DINConfig.gamma",)),
    Setting("DIN batch size", 10240, "we set batch size to 10,240", DIN_BATCH,
            ("lgsid_pipeline.recommenders.din:DINConfig.batch_size",),
            why="The public data sets have 10^4-10^5 training impressions: a 10,240 batch would leave a "
                "handful of steps per epoch."),
    Setting("negatives per positive impression", 4, "negatives are down-sampled at a 1:4 ratio",
            DIN_NEGATIVE_RATIO, ("lgsid_pipeline.recommenders.din:DINConfig.neg_ratio",
                                 "lgsid_pipeline.recommenders.din:DINConfig.eval_negatives")),
    Setting("ranking cut-offs K", (5, 10), "NDCG@K and Hit@K with k = {5, 10}", EVAL_KS,
            ("lgsid_pipeline.recommenders.metrics:KS",)),
    Setting("prompt length", 512, "we set the prompt length to 512 tokens", ENCODER_MAX_LENGTH,
            ("lgsid_pipeline.alignment.encoder:EncoderConfig.max_length",),
            why="The default encoder (all-MiniLM-L6-v2) was trained at 128 tokens and the Appendix A prompts "
                "are 40-90 tokens; batches are padded to their own longest item, never to the cap."),
    Setting("text pooling", "last", "using the last token's hidden state to represent the entire text",
            ENCODER_POOLING, ("lgsid_pipeline.alignment.encoder:EncoderConfig.pooling",),
            why="Last-token pooling suits the paper's decoder-style BGE setup; the default sentence encoder "
                "was trained with mean pooling. 'last' stays available (EncoderConfig.pooling)."),
)


def setting(name: str) -> Setting:
    """The row called ``name`` (KeyError naming the known rows otherwise)."""
    for s in APPENDIX_B:
        if s.name == name:
            return s
    raise KeyError(f"no Appendix B setting {name!r}; known: {[s.name for s in APPENDIX_B]}")


def markdown_table() -> str:
    """The table as docs/ARCHITECTURE.md shows it (a test checks the doc holds this text)."""
    rows = ["| setting | paper | ours | where the default lives | why, where it departs |",
            "|---|---|---|---|---|"]
    for s in APPENDIX_B:
        homes = "<br>".join(f"`{h}`" for h in s.homes)
        rows.append(f"| {s.name} | {s.paper} | {s.ours} | {homes} | {s.why or ('follows the paper' if s.follows_paper else '')} |")
    return "\n".join(rows)
