"""The model card (README.md) of a transformers export: what the model is, how it was trained, how to use it.

``run_facts`` collects what a run directory records (train_config.json, the prepared data's meta.json, the
last training record of metrics.jsonl), ``evaluation_facts`` what ``admin-ds evaluate --output`` wrote;
``model_card`` writes them as Markdown with the Hub's YAML header. Missing facts
are said to be unknown, never guessed.
"""

from __future__ import annotations

import json
from pathlib import Path

from admin_ds.checkpoints.rundir import METRICS, read_run_config
from admin_ds.errors import UserError
from admin_ds.io import read_json_object, read_json_or_empty

SCHEMES = {"admin": "Admin (Liu et al. 2020, adaptive model initialisation: a trained shortcut scale ω per "
                    "sublayer, folded into the weights here)",
           "deepnorm": "DeepNorm (Wang et al. 2022: a constant shortcut scale α, folded into the weights here)",
           "post-ln": "Post-LN"}


def last_metrics(run_dir: Path) -> dict:
    """The last training record (one with a loss) of a run's metrics.jsonl, or {}."""
    path = run_dir / METRICS
    if not path.is_file():
        return {}
    last = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "loss" in record:
            last = record
    return last


def run_facts(source: Path) -> dict:
    """Languages, data and training settings recorded by the run that ``source`` (a checkpoint) belongs to."""
    facts: dict = {}
    for directory in (source, source.parent):
        run = read_run_config(directory)
        if run:
            facts["train"] = run.get("train") or {}
            facts["seed"] = run.get("seed")
            facts["world_size"] = run.get("world_size")
            facts["metrics"] = last_metrics(directory)
            data = run.get("data")
            if data:
                meta = read_json_or_empty(Path(data) / "meta.json")
                facts["data"] = Path(data).name
                facts["langs"] = (meta.get("source_lang"), meta.get("target_lang"))
                facts["train_pairs"] = ((meta.get("splits") or {}).get("train") or {}).get("examples")
            break
    return facts


def evaluation_facts(path: str | Path) -> dict:
    """BLEU, chrF and their signatures from the JSON ``admin-ds evaluate --output FILE`` wrote."""
    result = read_json_object(path, "--evaluation file")
    if not isinstance(result.get("bleu"), (int, float)):
        raise UserError(f"--evaluation file {path} has no BLEU score (write it with admin-ds evaluate --output)")
    facts = {"bleu": float(result["bleu"]), "bleu_signature": result.get("signature"), "chrf": result.get("chrf"),
             "eval_sentences": result.get("n_sentences"), "eval_text": result.get("text_from")}
    return {key: value for key, value in facts.items() if value is not None}


def evaluation_lines(facts: dict) -> list[str]:
    if "bleu" not in facts:
        return ["- BLEU: not measured (convert with --evaluation FILE from admin-ds evaluate --output FILE)"]
    lines = [f"- BLEU {facts['bleu']:.2f}" + (f", chrF {facts['chrf']:.2f}" if "chrf" in facts else "") +
             f" on {_fmt(facts.get('eval_sentences'))} sentences ({_fmt(facts.get('eval_text'))}), "
             "admin-ds's own beam search (beam and length penalty as evaluated)"]
    if facts.get("bleu_signature"):
        lines.append(f"- sacrebleu signature: `{facts['bleu_signature']}`")
    return lines


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "unknown" if value is None else str(value)


def model_card(settings: dict, residual: str, langs: tuple[str, str], facts: dict) -> str:
    """README.md for a transformers export of a folded model (``settings``: ``plain_config``'s dict)."""
    src, tgt = langs
    train, metrics = facts.get("train") or {}, facts.get("metrics") or {}
    params = _parameters(settings)
    lines = ["---", f"language: [{src}, {tgt}]", "library_name: transformers", "pipeline_tag: translation",
             "tags: [translation, admin-ds, admin]", "---", "",
             f"# {src}-{tgt} translation, trained with admin-ds (Admin)", "",
             f"An encoder-decoder Transformer translating {src} into {tgt}, trained with admin-ds using "
             f"{SCHEMES.get(residual, residual)}. It loads as `FSMTForConditionalGeneration` with a "
             "`MarianTokenizer` (sentencepiece); no admin-ds code is needed.", "",
             "```python", "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer", "",
             'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")',
             'model = AutoModelForSeq2SeqLM.from_pretrained("PATH/TO/THIS/FOLDER")',
             'out = model.generate(**tokenizer(["..."], return_tensors="pt", padding=True))',
             "print(tokenizer.batch_decode(out, skip_special_tokens=True))", "```", "",
             '(transformers 4.x also has `pipeline("translation", model=...)`; 5.x removed that task.)', "",
             "## Architecture", "",
             f"- {settings['num_encoder_layers']} encoder and {settings['num_decoder_layers']} decoder layers, "
             f"d_model {settings['d_model']}, {settings['nhead']} heads, FFN {settings['dim_feedforward']}, "
             f"ReLU, about {params / 1e6:.1f}M parameters",
             f"- Post-LN (training scheme: {residual}; shortcut scales folded into the weights, so the plain "
             "Post-LN computation here equals the trained model's)",
             f"- sinusoidal positions (fairseq's formula, ω folded in; stored in the weights), up to "
             f"{settings['max_positions']} tokens per side; embeddings scaled by sqrt(d_model)",
             f"- vocabulary: {settings['src_vocab_size']} source / {settings['tgt_vocab_size']} target ids "
             "(sentencepiece; ids beyond the sentencepiece model are never generated)", "",
             "## Training", "",
             f"- data: {_fmt(facts.get('data'))} ({_fmt(facts.get('train_pairs'))} training pairs)",
             f"- updates: {_fmt(metrics.get('step', train.get('max_steps')))}, optimizer "
             f"{_fmt(train.get('optimizer'))}, peak learning rate {_fmt(train.get('lr'))} after "
             f"{_fmt(train.get('warmup_updates'))} warmup updates, label smoothing "
             f"{_fmt(train.get('label_smoothing'))}, {_fmt(facts.get('world_size'))} rank(s), seed "
             f"{_fmt(facts.get('seed'))}",
             f"- last training loss: {_fmt(metrics.get('loss'))}",
             "- trained with admin-ds (DeepSpeed), Admin initialisation of the residual branches", "",
             "## Evaluation", "", *evaluation_lines(facts), "",
             "## Decoding", "",
             "generation_config.json reproduces admin-ds's beam search: beam 5, length penalty 1 (score = sum of "
             "log-probabilities / length ** penalty, EOS counted), a sentence ends once 5 hypotheses ended, EOS "
             "forced at the length cap. admin-ds caps each sentence at int(1.2 * source length + 10) tokens; "
             "transformers caps a call at `max_length`, which counts the decoder start token (pass max_length = "
             "int(1.2 * source length + 10) + 2 per sentence to match).", ""]
    return "\n".join(lines)


def _parameters(settings: dict) -> int:
    d, f = settings["d_model"], settings["dim_feedforward"]
    attention, ffn, norm = 4 * d * d + 4 * d, 2 * d * f + f + d, 2 * d
    encoder = settings["num_encoder_layers"] * (attention + ffn + 2 * norm)
    decoder = settings["num_decoder_layers"] * (2 * attention + ffn + 3 * norm)
    tables = (settings["src_vocab_size"] + 2 * settings["tgt_vocab_size"]) * d
    return encoder + decoder + tables
