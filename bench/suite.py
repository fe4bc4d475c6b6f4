"""The benchmarks of bench/ as one suite: a light adapter per script, each returning side-by-side ratios.

Every figure is a ratio of two things measured in the same process, alternating (A B, B A, A B, ...) so
that drift of a shared machine hits both alike; one ratio per repeat, and the suite reports their median.
The adapters reuse the scripts' own models, batches and step functions, passing their sizes as arguments
(``quick``: a smoke run of tiny sizes); no script's module state is changed. ``python -m bench``
(bench/__main__.py) runs them and writes the results.
"""

from __future__ import annotations

import importlib.util
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
TATOEBA = REPO.parent / "shared" / "data" / "tatoeba-de-en"


@dataclass
class Figure:
    """One ratio: ``ratios`` per repeat (first / second side as ``meaning`` says), and the two sides' own
    per-repeat values with their ``unit``."""

    name: str
    meaning: str
    ratios: list[float]
    sides: dict[str, list[float]] = field(default_factory=dict)
    unit: str = "s"

    def to_dict(self) -> dict:
        ratios = self.ratios
        return {"name": self.name, "meaning": self.meaning, "ratio": statistics.median(ratios),
                "min": min(ratios), "max": max(ratios), "n": len(ratios),
                "medians": {side: statistics.median(v) for side, v in self.sides.items()}, "unit": self.unit,
                "ratios": ratios}


class Skip(Exception):
    """A benchmark that cannot run here (no GPU, no data); the message says why."""


def alternate(first: Callable[[], float], second: Callable[[], float], repeats: int) -> tuple[list, list]:
    """Per repeat, both measurements, the order swapped every repeat. Returns (first values, second values)."""
    a, b = [], []
    for repeat in range(repeats):
        if repeat % 2 == 0:
            a.append(first())
            b.append(second())
        else:
            b.append(second())
            a.append(first())
    return a, b


def speed_figure(name: str, meaning: str, fast: str, slow: str, times: tuple[list, list]) -> Figure:
    """ratio = slow side's time / fast side's time, per repeat (> 1: ``fast`` is faster)."""
    fast_t, slow_t = times
    return Figure(name, meaning, [s / f for f, s in zip(fast_t, slow_t)], {fast: fast_t, slow: slow_t})


# --- adapters ------------------------------------------------------------------------------------------
def bench_model(quick: bool) -> list[Figure]:
    from bench import bench_model as b

    configs = {"2-2 d=32": dict(encoder_layers=2, decoder_layers=2, d_model=32, nhead=4, ffn_dim=64)} if quick \
        else b.CONFIGS
    repeats, steps = (5, 1) if quick else (7, 2)
    batch_shape = (8, 12, 12) if quick else (b.BATCH, b.SRC_LEN, b.TGT_LEN)  # rows, source and target tokens
    figures = []
    for name, shape in configs.items():
        models = {side: b.make_model(side, shape) for side in ("ours", "stock")}
        batch = b.make_batch(*batch_shape)
        for model in models.values():
            b.timed(model, batch, 1)  # warm-up
        times = alternate(lambda: b.timed(models["ours"], batch, steps), lambda: b.timed(models["stock"], batch, steps),
                          repeats)
        figures.append(speed_figure(f"model {name}: ours vs nn.Transformer", "training-step speed, ours / stock",
                                    "ours", "stock", times))
    return figures


def bench_dropout(quick: bool) -> list[Figure]:
    from torch import nn

    from admin_ds.model.dropout import Dropout
    from bench import bench_dropout as b

    shape, calls, repeats = ((16, 32, 128), 10, 5) if quick else ((64, 32, 128), 50, 7)
    torch.manual_seed(0)
    x, grad = torch.randn(*shape, requires_grad=True), torch.randn(*shape)
    ours, stock = Dropout(0.1).train(), nn.Dropout(0.1).train()
    times = alternate(lambda: b.per_call(lambda: ours(x).backward(grad), calls),
                      lambda: b.per_call(lambda: stock(x).backward(grad), calls), repeats)
    return [speed_figure(f"dropout {list(shape)} p=0.1: ours vs nn.Dropout", "forward+backward speed, ours / stock",
                         "ours", "nn.Dropout", times)]


def bench_cpu_bf16(quick: bool) -> list[Figure]:
    from admin_ds.model import build_model
    from bench import bench_cpu_bf16 as b

    tokens, arch = (200, "admin-tiny") if quick else (4096, "admin-small")
    torch.manual_seed(0)
    rows = tokens // 10
    batch = (torch.randint(4, 8000, (rows, 9)), torch.randint(4, 8000, (rows, 10)), torch.randint(4, 8000, (rows, 10)))
    model = build_model(arch, residual="admin", src_vocab_size=8000, tgt_vocab_size=8000).train()
    for dtype in (torch.float32, torch.bfloat16):
        b.step_seconds(model, batch, dtype, False)  # warm-up
    times = alternate(lambda: b.step_seconds(model, batch, torch.bfloat16, False),
                      lambda: b.step_seconds(model, batch, torch.float32, False), 5)
    return [speed_figure(f"bf16 on CPU, {arch} {rows}x10 tokens", "forward+backward speed, bf16 (math kernel) / fp32",
                         "bf16", "fp32", times)]


def _checkpointed_pair(quick: bool):
    from admin_ds.model import build_model

    shape = dict(encoder_layers=4, decoder_layers=2, d_model=32, nhead=4, ffn_dim=64) if quick else \
        dict(encoder_layers=60, decoder_layers=12, d_model=128, nhead=4, ffn_dim=512)
    rows, length = (8, 12) if quick else (64, 32)
    models = {}
    for every in (0, 1):
        torch.manual_seed(0)
        models[every] = build_model("admin-small", checkpoint_every=every, **shape).train()
    gen = torch.Generator().manual_seed(0)
    src, tgt = (torch.randint(4, 8000, (rows, length), generator=gen) for _ in range(2))
    return models, (src, tgt), f"{shape['encoder_layers']}-{shape['decoder_layers']} d={shape['d_model']}"


def bench_checkpointing(quick: bool) -> list[Figure]:
    models, (src, tgt), label = _checkpointed_pair(quick)
    optimizers = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    repeats, steps = (5, 1) if quick else (5, 3)

    def run(every: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            models[every](src, tgt, target=tgt, label_smoothing=0.1)[0].backward()
            optimizers[every].step()
            optimizers[every].zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / steps

    run(0), run(1)  # warm-up
    off, on = alternate(lambda: run(0), lambda: run(1), repeats)
    return [Figure(f"checkpointing every layer, {label}: step time", "step time, checkpointed / not (cost)",
                   [a / b for a, b in zip(on, off)], {"checkpointed": on, "plain": off})]


def bench_compile(quick: bool) -> list[Figure]:
    from bench import bench_compile as b

    name, repeats, steps = ("2-2 d=32", 5, 1) if quick else ("18-6 d=256", 7, 2)
    models = b.make_pair(b.CONFIGS[name], count_ops=False)
    batch = b.bm.make_batch(*(b.QUICK_BATCH if quick else b.FULL_BATCH))
    b.timed(models["compiled"], batch, 1)  # compiles; bench_compile.py reports how long that takes
    b.timed(models["eager"], batch, 1)
    times = alternate(lambda: b.timed(models["compiled"], batch, steps), lambda: b.timed(models["eager"], batch, steps),
                      repeats)
    return [speed_figure(f"compiled layers vs eager, {name}", "training-step speed, compiled / eager",
                         "compiled", "eager", times)]


def bench_generate(quick: bool) -> list[Figure]:
    import admin_ds
    from admin_ds.inference.beam import generate, make_batch

    arch, sentences, beam, max_len = ("admin-tiny", 2, 2, 6) if quick else ("admin-small", 16, 5, 30)
    torch.manual_seed(0)
    model = admin_ds.build_model(arch, dropout=0.0, max_positions=256).eval()
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(4, model.cfg.src_vocab_size, (int(n),), generator=gen).tolist() + [model.cfg.eos_id]
            for n in torch.randint(10, 31, (sentences,), generator=gen)]
    src = make_batch(rows, model.cfg.pad_id, torch.device("cpu"))
    options = dict(beam=beam, nbest=1, max_len_a=0.0, max_len_b=max_len)
    reference = [h[0].tokens for h in generate(model, src, incremental=True, **options)]

    def run(incremental: bool) -> float:
        start = time.perf_counter()
        hyps = generate(model, src, incremental=incremental, **options)
        seconds = time.perf_counter() - start
        assert [h[0].tokens for h in hyps] == reference, "incremental and full recompute disagree"
        return seconds

    times = alternate(lambda: run(True), lambda: run(False), 5)
    return [speed_figure(f"beam {beam}, {arch}, {sentences} sentences: key/value cache vs recompute",
                         "decoding speed, cached / full recompute", "cached", "recompute", times)]


def bench_engine(quick: bool) -> list[Figure]:
    from admin_ds.training import engine as training_engine
    from admin_ds.training.rendezvous import fill_rendezvous_env
    from bench import bench_engine as b

    arch, (rows, length) = ("admin-tiny", (8, 12)) if quick else ("admin-6-6", (64, 32))
    repeats, steps = (5, 1) if quick else (5, 3)
    os.environ.update(fill_rendezvous_env(os.environ))  # the suite is an entry point: it fills the rendezvous
    training_engine.init_distributed()
    try:
        plain, zero2 = b.PlainLoop(arch), b.EngineLoop("cpu_zero2_fp32.json", arch)
        batch = b.make_batch(rows, length)
        times = alternate(lambda: b.timed(zero2, batch, steps), lambda: b.timed(plain, batch, steps), repeats)
    finally:
        training_engine.finish_distributed()
    label = "admin-tiny" if quick else "6-6 d=256"
    return [speed_figure(f"DeepSpeed ZeRO-2 engine vs plain torch loop, {label}", "step speed, engine / plain",
                         "engine", "plain", times)]


def bench_prepare(quick: bool) -> list[Figure]:
    import sentencepiece as spm

    from admin_ds.data import train_sentencepiece
    from admin_ds.data.textio import read_lines
    from bench import bench_prepare as b

    if not (TATOEBA / "train.de").is_file():
        raise Skip(f"Tatoeba de-en not found at {TATOEBA}")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "corpus"
        data.mkdir()
        limit = 3000 if quick else None
        for prefix in b.SPLITS.values():
            for lang in b.LANGS:
                lines = list(read_lines(TATOEBA / f"{prefix}.{lang}"))[:limit]
                (data / f"{prefix}.{lang}").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        model = train_sentencepiece([data / "train.de", data / "train.en"], Path(tmp) / "spm", 500 if quick else 8000,
                                    "bpe")
        sp = spm.SentencePieceProcessor(model_file=str(model))
        lines = [line for p in b.SPLITS.values() for lang in b.LANGS for line in read_lines(data / f"{p}.{lang}")]
        times = alternate(lambda: b.timed_prepare(data, model, Path(tmp) / "out", 2), lambda: b.bare_loop(sp, lines),
                          5)
    return [speed_figure(f"prepare vs a bare sentencepiece loop, {len(lines):,} lines", "speed, prepare / bare loop",
                         "prepare", "bare loop", times)]


def bench_ctranslate2(quick: bool) -> list[Figure]:
    """The script's --random-arch mode: CTranslate2 (fp32, int8) against our beam search on one random-weight
    model and the same Tatoeba lines; outputs run mostly to the length cap (bench_ctranslate2.py says why)."""
    from admin_ds.checkpoints.convert import convert
    from admin_ds.data import train_sentencepiece
    from admin_ds.inference.config import DecodingConfig
    from admin_ds.inference.ctranslate2_engine import CT2Model, translate_ct2
    from admin_ds.inference.translate import load_translator, translate_with
    from bench import bench_ctranslate2 as b

    if importlib.util.find_spec("ctranslate2") is None:  # the engine module imports it only when used
        raise Skip("ctranslate2 is not installed (pip install 'admin-ds[ctranslate2]')")
    if not (TATOEBA / "test.de").is_file():
        raise Skip(f"Tatoeba de-en not found at {TATOEBA}")
    arch, count, vocab = ("admin-tiny", 8, 300) if quick else ("admin-6-6", 100, 8000)
    sources = b.subset(str(TATOEBA / "test.de"), count)
    decoding = DecodingConfig(beam=5, max_tokens=4096, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        spm = train_sentencepiece([TATOEBA / "test.de", TATOEBA / "test.en"], Path(tmp) / "spm", vocab, "bpe")
        checkpoint = b.random_checkpoint(arch, str(spm), Path(tmp) / "random")
        model, tokenizer, tgt_tokenizer = load_translator(str(checkpoint), decoding)
        ours = lambda: translate_with(model, tokenizer, tgt_tokenizer, sources, decoding)  # noqa: E731
        figures = []
        for quantization in (None, "int8"):
            out = Path(tmp) / f"ct2-{quantization or 'fp32'}"
            convert(checkpoint, out, format="ctranslate2", quantization=quantization)
            ct2 = CT2Model(out, threads=torch.get_num_threads())
            theirs = lambda ct2=ct2: translate_ct2(ct2, sources, decoding)  # noqa: E731
            ours(), theirs()  # warm-up
            times = alternate(lambda: _seconds(theirs), lambda: _seconds(ours), 5)
            figures.append(speed_figure(f"CTranslate2 {quantization or 'fp32'} vs our beam search, {arch} random, "
                                        f"{count} lines, beam 5", "translation speed, CTranslate2 / ours",
                                        "ctranslate2", "admin-ds", times))
    return figures


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def needs_gpu(quick: bool) -> list[Figure]:
    if not torch.cuda.is_available():
        raise Skip("needs a CUDA GPU (none here)")
    raise Skip("a GPU is here, but the one-GPU check runs on its own: bash bench/gpu_check.sh")


ADAPTERS: dict[str, Callable[[bool], list[Figure]]] = {
    "bench_model": bench_model, "bench_dropout": bench_dropout, "bench_cpu_bf16": bench_cpu_bf16,
    "bench_checkpointing": bench_checkpointing, "bench_generate": bench_generate, "bench_engine": bench_engine,
    "bench_prepare": bench_prepare, "bench_ctranslate2": bench_ctranslate2, "bench_compile": bench_compile,
    "gpu_check": needs_gpu,
}

# Scripts the suite does not run, and why (each still runs alone; bench/README.md has its sizes).
EXCLUDED = {
    "bench_zero_memory": "byte counts, not timings, from 2 torchrun ranks; deterministic, so a ratio of repeats "
                         "says nothing: run it alone",
    "bench_hook": "2 torchrun ranks of a 60-12 model, minutes per repeat: run it alone",
    "bench_eval_bleu": "torchrun launches at 1 and 2 ranks over the Tatoeba dev set, seconds to minutes per repeat, "
                       "absolute times: run it alone",
    "bench_convert": "trains a 60-12 d=512 checkpoint on 2 ranks first (minutes, GiBs): run it alone",
    "bench_prepare_scale": "a scale study (millions of pairs, fresh processes, an old tree): run it alone",
    "stability": "a 50-minute training study; its --quick smoke run is tests/test_stability_bench.py",
    "profile_step": "a profile (time by kind, kernels per layer), not a ratio: run it alone",
    "bench_padding": "padding shares of one deterministic epoch, not timings: run it alone",
}

# Modules the benchmarks import, not benchmarks themselves.
HELPERS = {"__main__", "suite", "compare", "host_reads", "matmul_rate", "tensor_batch"}


def finite(figure: Figure) -> bool:
    return all(math.isfinite(r) and r > 0 for r in figure.ratios)
