"""The text encoder (LLM) used for item embeddings and G-DPO alignment."""

from __future__ import annotations

import functools
from typing import Literal

import dagster as dg
from pydantic import Field

from lgsid_pipeline.alignment.encoder import DTYPES, POOLINGS, EncoderConfig, TextEncoder
from lgsid_pipeline.alignment.prompts import DEFAULT_TEMPLATE_NAME, TEMPLATE_LINES, TEMPLATE_NAMES, PromptTemplate, prompt_template


@functools.lru_cache(maxsize=2)
def _cached_encoder(config: EncoderConfig) -> TextEncoder:
    return TextEncoder(config)


class EncoderResource(dg.ConfigurableResource):
    """Any HF BERT-family encoder directory; default: the bundled all-MiniLM-L6-v2.

    BGE (the paper's backbone) works by path with ``pooling="cls"`` or ``"last"``.
    """

    model_path: str | None = Field(default=None, description="HF model directory; None = bundled all-MiniLM-L6-v2.")
    pooling: Literal[POOLINGS] = Field(default="mean", description="cls | mean | last (the paper's last-token pooling)")
    normalize: bool = True
    max_length: int = Field(default=128, description="Token cap; batches are padded to their longest item.")
    batch_size: int = 32
    device: str = Field(default="auto", description="auto (cuda when available) | cpu | cuda")
    dtype: Literal[DTYPES] = Field(default="auto", description="auto: float32 weights (training stays exact) and "
                                   "bfloat16 inference where the hardware has it and the embeddings match float32 "
                                   "to cosine 0.999 on a probe set | float32 (the exact path everywhere) | bfloat16 | "
                                   "float16.")
    prompt_template: Literal[TEMPLATE_NAMES] = Field(default=DEFAULT_TEMPLATE_NAME,
                                 description="paper (Appendix A: content + province/city/town, no coordinates) | "
                                             "coordinates (adds a lat, lon line; geography becomes a string match).")
    instruction: bool = Field(default=False, description="Prefix every prompt with the paper's instruction line. "
                              "On for instruction-tuned encoders (BGE-style); off for sentence encoders such as "
                              "the bundled MiniLM, which would mean-pool the constant text into every item.")

    def template(self) -> PromptTemplate:
        """The prompt template every stage renders with (reward lists, G-DPO pairs, item embeddings)."""
        if self.prompt_template not in TEMPLATE_LINES:
            raise ValueError(f"EncoderResource.prompt_template must be one of {sorted(TEMPLATE_LINES)}, "
                             f"got {self.prompt_template!r}")
        return prompt_template(self.prompt_template, self.instruction)

    def config(self) -> EncoderConfig:
        return EncoderConfig(model_path=self.model_path, pooling=self.pooling, normalize=self.normalize,
                             max_length=self.max_length, batch_size=self.batch_size, device=self.device,
                             dtype=self.dtype)

    def encoder(self) -> TextEncoder:
        return _cached_encoder(self.config())
