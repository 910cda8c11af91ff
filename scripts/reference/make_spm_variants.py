"""Reference ids for T5 tokenizer folders that hold only `spiece.model` (no tokenizer.json).

transformers' T5TokenizerFast.from_pretrained converts such a folder from the slow tokenizer
(sentencepiece protobuf -> Unigram, Precompiled + Strip + Replace normalizer, Metaspace with the
prepend scheme from `legacy`, `</s>` appended, `<extra_id_N>` ids in reverse after the pieces).
The engine does the same conversion in Rust (src/model/spm.rs); this script writes what
transformers produces for a few tokenizer_config.json variants around the tiny model's
spiece.model, to tests/fixtures/tokenizer_fuzz/spm_variants.json.

Run: .venv-ref/bin/python scripts/reference/make_spm_variants.py
"""

import json
import shutil
import tempfile
from pathlib import Path

import transformers
from transformers import T5TokenizerFast

ROOT = Path(__file__).resolve().parents[2]
SPM = ROOT / "assets/tiny-model/tokenizer_3/spiece.model"
OUT = ROOT / "tests/fixtures/tokenizer_fuzz/spm_variants.json"

PROMPTS = [
    "A young musician strumming an acoustic guitar",
    "",
    "   leading and trailing spaces   ",
    "double  spaces\tand\ttabs\nand newlines",
    "Full-width ＡＢＣ１２３ and ligatures ﬁ ﬂ, café, naïve, Ⅻ",
    "special literals </s> <pad> <unk> inside text",
    "extra ids <extra_id_0> and <extra_id_99> and <extra_id_5>x and <extra_id_100>",
    "custom <my_token> literal",
    "日本語のテキストと emoji 🎸🔥",
    "UPPER lower MiXeD 12,345.67 $%&*()[]{}",
    " ".join(["a long prompt that will be truncated"] * 60),
]

VARIANTS = {
    # the tiny model's own config (extra_ids 0, legacy true)
    "tiny": None,
    # T5's defaults: 100 extra ids, legacy (prepend_scheme always)
    "extra100": {"extra_ids": 100, "legacy": True},
    # non-legacy: Metaspace prepend_scheme "first"
    "extra100_nonlegacy": {"extra_ids": 100, "legacy": False},
    # no tokenizer_config.json at all: the class defaults (extra_ids 100, legacy unset -> true)
    "no_config": {},
    # an additional special token that is not in the vocabulary (gets the next id)
    "custom_special": {"extra_ids": 0, "legacy": True, "additional_special_tokens": ["<my_token>"]},
}


def main():
    out = {"transformers": transformers.__version__, "max_length": 256, "prompts": PROMPTS, "variants": {}}
    for name, cfg in VARIANTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            shutil.copy(SPM, d / "spiece.model")
            if cfg is None:
                cfg_json = json.loads((SPM.parent / "tokenizer_config.json").read_text())
                shutil.copy(SPM.parent / "special_tokens_map.json", d / "special_tokens_map.json")
            elif cfg:
                cfg_json = dict(cfg, tokenizer_class="T5Tokenizer")
            else:
                cfg_json = None
            if cfg_json is not None:
                (d / "tokenizer_config.json").write_text(json.dumps(cfg_json, indent=2))
            tok = T5TokenizerFast.from_pretrained(d)
            assert not (d / "tokenizer.json").exists()
            ids = [tok(p, padding="max_length", max_length=256, truncation=True).input_ids for p in PROMPTS]
            # strip the padding to keep the file small; the test pads with the pad id
            pad = tok.pad_token_id
            lens = [256 - next((i for i, v in enumerate(reversed(r)) if v != pad), 256) for r in ids]
            out["variants"][name] = {
                "tokenizer_config": cfg_json,
                "special_tokens_map": cfg is None,
                "pad": pad,
                "eos": tok.eos_token_id,
                "vocab_size": len(tok),
                "ids": [r[:n] for r, n in zip(ids, lens)],
            }
            print(name, len(tok), [len(r[:n]) for r, n in zip(ids, lens)])
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
