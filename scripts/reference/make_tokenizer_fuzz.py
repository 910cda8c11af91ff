#!/usr/bin/env python3
"""Differential-fuzzing corpus for the three tokenizers (tests/fixtures/tokenizer_fuzz/).

    .venv-ref/bin/python scripts/reference/make_tokenizer_fuzz.py
    .venv-ref/bin/python scripts/reference/make_tokenizer_fuzz.py --codepoints /tmp/codepoints.tsv  # optional
    .venv-ref/bin/python scripts/reference/make_tokenizer_fuzz.py --ccc-table  # src/model/tokenizer.rs's table

Generates a deterministic corpus (fixed seed, no network, byte-identical on every run) of prompts that look like what
users type and what breaks tokenizers, and records the ids the reference produces for each prompt exactly the way
diffusers' StableDiffusion3Pipeline calls the tokenizers:

* `_get_clip_prompt_embeds`: `tokenizer([prompt], padding="max_length", max_length=77, truncation=True)` for
  `tokenizer/` and `tokenizer_2/` (slow CLIPTokenizer, no ftfy: the BasicTokenizer path), and the untruncated
  `tokenizer([prompt], padding="longest")` the pipeline's truncation warning uses.
* `_get_t5_prompt_embeds`: `tokenizer_3([prompt], padding="max_length", max_length=256, truncation=True,
  add_special_tokens=True)` (T5TokenizerFast), and the untruncated `padding="longest"` call.

T5 tokenizers checked:
* `t5_tiny`: assets/tiny-model/tokenizer_3 (128-piece unigram).
* `t5_like`: a T5-shaped tokenizer built offline: a 4000-piece unigram sentencepiece model (nmt_nfkc, pad 0, eos 1,
  unk 2) trained on sentencepiece's botchan.txt, converted by T5TokenizerFast with the real T5's 100 `<extra_id_N>`
  special tokens and the prefix space (`prepend_scheme: always`), like google/t5-v1_1-xxl. The real 32k
  spiece.model of T5 is not available offline.
* `t5_like_legacy`: the same vocabulary in the older tokenizer.json layout of the original T5 uploads (normalizer
  `Precompiled` only, pre-tokenizer `Sequence[WhitespaceSplit, Metaspace(add_prefix_space=true)]`, no model `type`),
  which exercises the `tokenizers` crate's parsing of legacy fields.

Files (kept small: ids are uint16 and padding is not stored):
* `prompts.jsonl`: one JSON string per line (prompt i = line i).
* `ids.safetensors`: for each tokenizer NAME, `NAME.ids` (U16, the non-padding prefix of every padded row, rows
  concatenated), `NAME.len` (I32 [N], length of that prefix, = sum of the attention mask), `NAME.full_len` (I32 [N],
  length of the untruncated ids with BOS/EOS). Padded row i = ids[off_i : off_i + len_i] + [pad] * (max - len_i);
  the metadata key `fuzz` (a JSON object) holds `NAME.pad`, `NAME.max_length` and versions. `clip_g` and `t5_like_legacy` store only the rows that differ
  from `clip_l` / `t5_like` (metadata `NAME.base`); `NAME.same_as_base` (U8 [N]) marks the rows not stored.
* `t5_like.tokenizer.json`: the t5_like tokenizer, with its 300 kB `precompiled_charsmap` replaced by the string
  `"@tiny-model"`: it is byte-identical to the one in assets/tiny-model/tokenizer_3/tokenizer.json (both are
  sentencepiece's built-in nmt_nfkc table; asserted here). Tests splice it back. The legacy variant is derived from
  it by `legacy_t5_json` here and the same transformation in tests/tokenizer_fuzz.rs.
"""

import json
import os
import random
import shutil
import sys
import tempfile
import unicodedata
from pathlib import Path

import numpy as np

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

import sentencepiece as spm  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from transformers import CLIPTokenizer, T5TokenizerFast  # noqa: E402

SEED = 20250611
N_PROMPTS = 2000
OUT = ROOT / "tests/fixtures/tokenizer_fuzz"
TINY = ROOT / "assets/tiny-model"
T5_LIKE_VOCAB = 4000
CHARSMAP_PLACEHOLDER = "@tiny-model"
# Rows equal to the base tokenizer's are not stored (clip_g differs from clip_l only around "!").
BASE = {"clip_g": "clip_l", "t5_like_legacy": "t5_like"}

# ----------------------------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------------------------
SUBJECTS = [
    "a golden retriever", "an astronaut", "a young woman with red hair", "an old fisherman", "a herd of elephants",
    "a cyberpunk samurai", "two kids", "a tiny robot", "a majestic eagle", "a street musician", "a ballerina",
    "a vintage car", "a steam locomotive", "a koi fish", "a panda", "a medieval knight", "a chef", "a jellyfish",
    "a surfer", "a hot air balloon", "a fox", "an octopus", "a Viking ship", "a dragon", "a corgi puppy",
    "a group of friends", "a businessman in a suit", "a skateboarder", "a hummingbird", "a polar bear",
    "a lighthouse keeper", "a DJ", "an F1 car", "a paper boat", "a cat wearing sunglasses", "the Eiffel Tower",
    "a snowboarder", "a lone wolf", "a firefighter", "a mermaid", "an android", "a toddler", "a grandmother",
]
ACTIONS = [
    "running through", "dancing in", "walking slowly across", "flying over", "swimming in", "exploring",
    "sitting quietly in", "jumping over a puddle in", "riding a bicycle through", "playing guitar in",
    "cooking dinner in", "reading a book in", "drifting around", "floating above", "sprinting across",
    "looking out over", "painting a mural in", "skating through", "climbing", "sleeping in", "laughing in",
]
PLACES = [
    "a neon-lit Tokyo street", "a misty pine forest", "the surface of Mars", "a sunflower field", "a busy market",
    "an abandoned warehouse", "a snowy mountain village", "a coral reef", "the streets of Paris", "a desert canyon",
    "a futuristic city", "a cozy kitchen", "a library full of old books", "a rainy alley", "a tropical beach",
    "a frozen lake", "a bamboo forest", "New York's Times Square", "a medieval castle courtyard", "outer space",
    "a lavender field in Provence", "a subway car", "an underwater cave", "a rooftop garden", "the Sahara",
]
TIMES = [
    "at sunset", "at golden hour", "at night", "during a thunderstorm", "at dawn", "in the rain", "under a full moon",
    "in heavy fog", "on a sunny afternoon", "during the blue hour", "while snow is falling", "in autumn",
]
STYLES = [
    "cinematic", "photorealistic", "8K", "4k uhd", "hyperrealistic", "Studio Ghibli style", "anime style",
    "shot on 35mm film", "Wes Anderson style", "vaporwave aesthetic", "oil painting", "watercolor", "claymation",
    "pixel art", "film grain", "highly detailed", "octane render", "Unreal Engine 5", "HDR", "bokeh",
    "shallow depth of field", "volumetric lighting", "dramatic lighting", "soft light", "slow motion",
    "time-lapse", "drone shot", "tracking shot", "dolly zoom", "handheld camera", "wide-angle lens",
    "close-up", "aerial view", "macro shot", "masterpiece", "best quality", "trending on artstation",
]
CAMERA = [
    "The camera slowly pans to the left.", "The camera pushes in on the subject's face.",
    "The shot pulls back to reveal the whole scene.", "A smooth tracking shot follows the subject.",
    "The camera orbits 360 degrees around the subject.", "Static camera, locked-off tripod shot.",
    "The camera tilts up toward the sky.", "A drone rises above the scene.", "Rack focus from foreground to background.",
]
DETAILS = [
    "Leaves swirl in the wind.", "Reflections shimmer on the wet pavement.", "Dust particles float in the light.",
    "Steam rises from a cup of coffee.", "Birds fly across the frame.", "Waves crash against the rocks.",
    "Lanterns sway gently.", "Sparks fly everywhere.", "Cherry blossoms fall slowly.", "Lightning flashes in the distance.",
    "The crowd cheers.", "Smoke curls upward.", "The colors are vivid and saturated.", "Everything is in slow motion.",
    "Raindrops splash in puddles.", "The water is crystal clear.", "Its fur ripples in the breeze.",
]
NEGATIVE = [
    "blurry, low quality, distorted, watermark, text, ugly, deformed, bad anatomy, extra fingers, jpeg artifacts",
    "worst quality, low resolution, static, overexposed, underexposed, noisy, grainy, duplicate, morbid",
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall gray",
]


def english_sentence(r):
    s = f"{r.choice(SUBJECTS)} {r.choice(ACTIONS)} {r.choice(PLACES)} {r.choice(TIMES)}"
    s = s[0].upper() + s[1:]
    if r.random() < 0.6:
        s += ", " + ", ".join(r.sample(STYLES, r.randint(1, 5)))
    return s + "."


def english_prompt(r, n_sentences=None):
    if n_sentences is None:
        n_sentences = r.choice([1, 1, 1, 2, 2, 3, 4, 5, 7, 12])
    parts = []
    for _ in range(n_sentences):
        k = r.random()
        if k < 0.55:
            parts.append(english_sentence(r))
        elif k < 0.75:
            parts.append(r.choice(DETAILS))
        elif k < 0.9:
            parts.append(r.choice(CAMERA))
        else:
            parts.append(", ".join(r.sample(STYLES, r.randint(3, 10))))
    out = " ".join(parts)
    if r.random() < 0.05:
        out = r.choice(NEGATIVE)
    return out


PUNCT_RUNS = [
    "!!!", "?!?!", "...", "…", "—", "–", "--", "---", "***", "~~~", "!!", "?", "!?", "¡Hola!", "¿qué?", "«quoted»",
    "“smart quotes”", "‘single’", "„German“", "(((emphasis)))", "[[brackets]]", "{braces}", "<angle>", "@#$%^&*",
    "\"quoted\"", "''", "``", ";;", "::", ",,", "/\\/\\", "|||", "+++", "===", "_ _ _", "•", "·", "※", "§¶", "†‡",
    "(masterpiece:1.2)", "[cat|dog]", "((best quality))", "::2", "-->", "<-", "=>", "^_^", ":-)", ";)", ":D", "xD",
    "¯\\_(ツ)_/¯", "(╯°□°)╯︵ ┻━┻", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "!a!b!", "a!!b", "! ! !", "!.!", "?!",
    "。", "、", "，", "！", "？", "：", "；", "「", "」", "『", "』", "【", "】", "〜", "・", "゛", "ー",
]
CONTRACTIONS = [
    "it's", "don't", "they're", "we've", "I'm", "you'll", "he'd", "IT'S", "DON'T", "THEY'RE", "WE'VE", "I'M",
    "YOU'LL", "HE'D", "It'S", "it’s", "don’t", "they’re", "I’m", "you’ll", "rock 'n' roll", "'s", "'t", "'re", "'ve",
    "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D", "o'clock", "'tis", "y'all'd've", "dogs'",
    "''s", "'ss", "'sa", "'lll", "'ddd", "cat's", "the cat's toy's color", "can't", "won't", "shan't", "ma'am",
    "'90s", "'twas", "it''s", "it`s", "it´s", "it＇s", "it's'", "'", "' s", "L'Oréal", "aujourd'hui", "d'Artagnan",
    "it'ſ", "'ſ", "'K", "don'T",
]
NUMBERS = [
    "1,000,000", "3.14159", "1.5e-3", "2024-05-17", "12:30:45", "$1,299.99", "50%", "4K", "1080p", "60fps",
    "24 fps", "1/2", "½", "¾", "²", "³", "①", "⑩", "٣", "١٢٣", "१२३", "１２３", "10,5 €", "−5°C", "#1", "No.7", "3x",
    "v2.0.1", "+1 (555) 123-4567", "Ⅻ", "ⅷ", "0.000001", "1e10", "007", "2^10", "42", "9999999999999999",
    "3:2", "16:9", "4:3", "21:9", "1920x1080", "f/1.8", "ISO 100", "1/250s", "50mm", "5.1", "100°", "25 km/h",
    "¥500", "£20", "₹100", "₿", "٫", "০১২", "๑๒๓", "〇", "一二三", "𝟙𝟚𝟛", "⁴²", "₂", "1st", "2nd", "3rd",
]
URLS = [
    "https://example.com/path?q=1&x=2#frag", "www.youtube.com/watch?v=dQw4w9WgXcQ", "user.name+tag@example.co.uk",
    "ftp://files.example.org/pub/video.mp4", "@username", "#hashtag", "#SunsetVibes", "file:///C:/Users/me/clip.mov",
    "C:\\Users\\name\\video.mp4", "~/videos/clip_01.mov", "http://localhost:8080/api/v1/generate",
    "mailto:someone@example.com", "https://zh.wikipedia.org/wiki/北京", "https://例え.jp/パス",
    "https://t.co/AbC123xYz", "git@github.com:owner/repo.git", "s3://bucket/key/file.safetensors",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
]
EMOJI = [
    "😀", "🔥", "🎬", "🌅", "😂😂😂", "❤️", "❤", "♥", "☀︎", "☀️", "👍🏽", "👋🏿", "👶🏻", "💪🏾", "👨‍👩‍👧‍👦", "🧑🏽‍🚀",
    "👩‍❤️‍💋‍👨", "🏳️‍🌈", "🏴‍☠️", "🇺🇸", "🇯🇵", "🇫🇷🇩🇪", "🇺🇦", "1️⃣", "#️⃣", "*️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "🐈‍⬛", "🐻‍❄️",
    "🫠", "🥹", "🫶🏼", "🫨", "🩷", "🪿", "🐦‍🔥", "🍋‍🟩", "🫩", "🪾", "✨", "⭐", "🌟", "☕", "⚡", "✔", "✅", "❌", "™",
    "©", "®", "🅰️", "🆗", "🈚", "👁‍🗨", "🧔‍♂️", "🏃‍♀️‍➡️", "👩🏽‍🦰", "🤷‍♂️", "🙋🏻‍♀️", "🎉🎊", "🌈☔", "🌊🏄", "🐉",
    "🀄", "🃏", "🎴", "🔟", "🆒", "⌛", "⏳", "⌚", "🕐", "♻️", "⚠️", "〰️", "〽️", "🟥🟧🟨🟩🟦🟪", "👾", "🤖",
]
SCRIPTS = [
    "一只猫在雨中奔跑", "夕阳下的长城", "赛博朋克风格的城市夜景，霓虹灯闪烁", "高清，电影感，慢动作",
    "桜の木の下で猫が眠っている", "東京の夜景、ネオンが光る", "カメラがゆっくりとズームインする", "ｶﾒﾗ ｽﾞｰﾑ",
    "ひらがなとカタカナ", "고양이가 비 오는 거리를 달린다", "서울의 야경", "한국어 텍스트", "แมวกำลังวิ่งในสายฝน",
    "ภาพยนตร์ที่สวยงาม", "قطة تركض تحت المطر", "مدينة مستقبلية في الليل", "חתול רץ בגשם", "שקיעה על הים",
    "बारिश में दौड़ती बिल्ली", "सूर्यास्त का दृश्य", "Μια γάτα τρέχει στη βροχή", "ΟΔΟΣ ΣΟΦΟΣ ΣΑΣ.", "Σίσυφος",
    "Кошка бежит под дождём", "ЗАКАТ НАД МОРЕМ", "Ёжик в тумане", "Một con mèo chạy dưới mưa", "Tiếng Việt có dấu",
    "ქართული ენა", "Հայերեն", "தமிழ் மொழி", "বাংলা ভাষা", "ગુજરાતી", "ಕನ್ನಡ", "മലയാളം", "සිංහල", "ትግርኛ", "ᐃᓄᒃᑎᑐᑦ",
    "𠀀𠮷𡈽", "豈更車", "⺀⺁⼀⼁", "ᄀᄁᄂ ᅡᅢ", "。、「引用」", "Ⓐⓑⓒ", "𝐁𝐨𝐥𝐝 𝑖𝑡𝑎𝑙𝑖𝑐 𝔉𝔯𝔞𝔨𝔱𝔲𝔯", "ℌ𝔢𝔩𝔩𝔬", "ᚠᚢᚦᚨᚱᚲ", "𓀀𓁐",
    "Ελληνικά και English mixed", "日本語とEnglishのmix", "中文English混合123", "русский123english",
]
COMBINING = [
    "café", "cafe\u0301", "naïve", "nai\u0308ve", "Ångström", "\u212bngstr\u00f6m", "A\u030angstro\u0308m", "ñ", "n\u0303",
    "e\u0301\u0302", "x\u0301", "q\u0323\u0307", "\u0301abc", "\u0301", "\u0300\u0301\u0302\u0303", "ﬁsh", "ﬀ",
    "\u212a", "\u2126", "\u0345", "İstanbul", "ISTANBUL", "ıi", "ẞ", "STRASSE", "straße", "ǅ", "ǆ", "Ǆ",
    "\u1100\u1161\u11a8", "\u110b\u1165", "Å", "Å", "Ω", "Ω", "ḱ", "ḱ", "ά", "ά", "ΐ", "ΐ", "ő", "ő",
    "e̊", "m̃", "ặ", "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇", "a\u034f b", "a\u200dz", "\u0915\u094d\u0937",
    "\u0e01\u0e34\u0e4a", "\u05e9\u05c1\u05b8", "\u0627\u064b", "\u3099", "\u309a", "か\u3099", "が",
]
FULLWIDTH = [
    "ＡＢＣ", "ｈｅｌｌｏ　ｗｏｒｌｄ", "ＦＵＬＬ　ＷＩＤＴＨ！", "１２３", "＃ｔａｇ", "（括弧）", "［ｘ］", "＜｜ｅｎｄｏｆｔｅｘｔ｜＞",
    "ＣＩＮＥＭＡＴＩＣ　８Ｋ", "ｉｔ＇ｓ", "＄１００", "～", "＿", "｀", "\u3000",
]
ACCENTED = [
    "Crème brûlée à la française", "Ærøskøbing", "Łódź", "Þórsmörk", "Dvořák", "Ślęża", "São Paulo", "Zürich",
    "façade", "jalapeño", "Mötley Crüe", "Beyoncé", "Pokémon", "résumé", "Ñandú", "ÉCOLE ÉLÉMENTAIRE",
    "Čeština", "Ğüşöçİ", "Œuvre", "ÿ", "Ÿ", "ŁÓDŹ", "Ørsted", "Åland", "Ħal", "ĳ", "Ĳssel", "ŉ", "ſ", "ǰ",
]
WHITESPACE = [
    "\u00a0", "\u2009", "\u200a", "\u2002", "\u2003", "\u202f", "\u205f", "\u3000", "\u200b", "\u200c", "\u200d",
    "\u2060", "\ufeff", "\u1680", "\u180e", "\u2028", "\u2029", "\u0085", "\t", "\n", "\r\n", "\r", "\x0b", "\x0c",
    "\x1c", "\x1d", "\x1e", "\x1f", "  ", "     ", "\t\t", "\n\n\n", " \u00a0 ", "\u2000", "\u2001", "\u2004",
    "\u2005", "\u2006", "\u2007", "\u2008",
]
CONTROL = [
    "\x00", "\x01", "\x07", "\x08", "\x1b[31m", "\x1b[0m", "\x7f", "\x80", "\x9f", "\ufffd", "\u00ad", "\u202e",
    "\u200e", "\u200f", "\u2066", "\u2069", "\ue000", "\uf8ff", "\U000f0000", "\ufffe", "\uffff", "\U000e0041",
    "\U000e007f", "\u061c", "\u2061", "\u206a", "\ufff9", "\U0001d173", "\u0378", "\U0003134b", "\U00031350",
    "\U0002ebe0", "\U0002ebf0", "\u2fff", "\U0001fae9",
]
SPECIALS = [
    "<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>", "<|EndOfText|>", "<|StartOfText|>", "< |endoftext| >",
    "<|endoftext|", "|endoftext|>", "<<|endoftext|>>", "<|endoftext|><|startoftext|>", "text<|endoftext|>text",
    "<|endoftext|>!", "!<|endoftext|>", "<|end\u200boftext|>", "<|start\u00adoftext|>", "<|endof text|>",
    "<|endoftext|>'s", "</s>", "<pad>", "<unk>", "<s>", "</S>", "<PAD>", "<extra_id_0>", "<extra_id_99>",
    "<extra_id_100>", "<extra_id_5><extra_id_6>", "x</s>y", "[CLS]", "[SEP]", "<mask>", "<|im_start|>", "<|im_end|>",
    "<|endoftext|>" * 3, "<|startoftext|>a photo of a cat<|endoftext|>", "▁", "▁▁hello", "\u2581x", "</w>", "a</w>",
]
HTML = [
    "&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&#x1F600;", "&nbsp;", "&copy;", "<b>bold</b>", "<br/>", "<br>",
    '<div class="x">', "</div>", "<script>alert(1)</script>", "<!-- comment -->", "**bold**", "_italic_", "`code`",
    "# Heading", "> quote", "- item", "1. item", "\\n", "\\t", '{"prompt": "cat"}', "[link](http://a.b)", "~~strike~~",
    "<img src=x onerror=alert(1)>", "&amp;amp;", "%20", "%E2%9C%A8", "\\u2764", "\\x00", "${var}", "{{template}}",
    "<|im_start|>user\nmake a video<|im_end|>",
]
LONG_WORDS = [
    "pneumonoultramicroscopicsilicovolcanoconiosis", "Donaudampfschifffahrtsgesellschaftskapitän",
    "supercalifragilisticexpialidocious" * 3, "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch",
    "Rindfleischetikettierungsüberwachungsaufgabenübertragungsgesetz",
    "hippopotomonstrosesquippedaliophobia", "antidisestablishmentarianism",
]


def repeated(r):
    unit = r.choice(["a", "A", "!", ".", "ha", "😂", "ー", "0", " ", "\u0301", "z", "o", "?!", "lol", "é", "猫", "ก",
                     "-", "_", "=", "<|endoftext|>", "'s", "\n", "\u200b", "ab", "xyz", "1,", "Σ"])
    n = r.choice([2, 3, 4, 5, 8, 10, 16, 25, 33, 50, 76, 77, 78, 100, 150, 255, 256, 300])
    return unit * n


def long_word(r):
    k = r.random()
    if k < 0.3:
        return r.choice(LONG_WORDS)
    if k < 0.55:
        return "".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(100, 400)))
    if k < 0.65:
        return "".join(r.choice("0123456789abcdef") for _ in range(64))
    if k < 0.75:
        return "".join(r.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
                       for _ in range(r.randint(100, 200))) + "=="
    if k < 0.82:
        return "".join(r.choice("的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年") for _ in range(r.randint(50, 150)))
    if k < 0.88:
        return "แมวกำลังวิ่งในสายฝน" * r.randint(5, 10)
    if k < 0.94:
        return "1234567890" * r.randint(10, 20)
    return "".join(r.choice("àéîõüçñøåæœß") for _ in range(r.randint(100, 200)))


COMBINING_MARKS = [chr(c) for c in range(0x110000) if unicodedata.combining(chr(c))]  # all 912 (Unicode 14.0)
# Starters that canonically compose with a following starter or mark (Hangul jamo, Indic two-part vowels, ...).
COMPOSING_STARTERS = (
    "aeiouAEIOUnNcCsSzZyYwW\u00e2\u00ea\u00f4\u01b0\u03b1\u03b7\u03c9\u0399\u0435\u0438\u0418"
    "\u0b47\u0b3e\u0b56\u0b57\u09c7\u09be\u09d7\u0bc6\u0bbe\u0bd7\u0cc6\u0cd5\u0d46\u0d3e\u0dd9\u0dca"
    "\u1025\u102e\u1b05\u1b35\u0915\u093c\u0f40\u0fb5"
    "\U00011099\U000110ba\U00011131\U00011127\U00011347\U0001133e\U000114b9\U000114ba\U000115b8\U000115af"
    "\U00011935\U00011930\U00011938"
)


def nfc_cluster(r):
    """A starter and up to four combining marks of any class (old and new), or a Hangul L V T run."""
    if r.random() < 0.15:
        return (chr(r.randint(0x1100, 0x1112)) + chr(r.randint(0x1161, 0x1175))
                + (chr(r.randint(0x11A7, 0x11C2)) if r.random() < 0.7 else ""))
    base = r.choice(COMPOSING_STARTERS) if r.random() < 0.7 else chr(r.choice([r.randint(0xC0, 0x24F),
                                                                                   r.randint(0x1E00, 0x1FFF)]))
    return base + "".join(r.choice(COMBINING_MARKS) for _ in range(r.choice([0, 1, 1, 2, 2, 3, 4])))


def soup(r):
    """Random code points from pools where neighbours interact: Hangul jamo (NFC composes them), combining marks,
    letters with special casing (final sigma, dotted I), apostrophes and letters, spaces, any BMP or SMP code point."""
    pools = [
        lambda: chr(r.randint(0x1100, 0x1112)) + chr(r.randint(0x1161, 0x1175)) + chr(r.randint(0x11A8, 0x11C2)),
        lambda: chr(r.choice([r.randint(0x300, 0x36F), r.randint(0x1AB0, 0x1ACE), r.randint(0x20D0, 0x20F0),
                              r.randint(0xFE20, 0xFE2F), 0x345, 0x3099, 0x309A])),
        lambda: r.choice("ΣσςΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΤΥΦΧΨΩİIıiẞßǅǄǆﬀﬁΐῼᾼ"),
        lambda: r.choice("abcdeklmrstvSTDLMRVEKſ'’`´"),
        lambda: r.choice("АБВГДЕЁЖабвгдеёж0123456789"),
        lambda: r.choice([" ", "\u00a0", "\u3000", "\t", "\n", "\u200b", "\u2028"]),
        lambda: r.choice(["<|endoftext|>", "<|startoftext|>", "!", "</s>", "<extra_id_1>", "▁", "<|"]),
        lambda: chr(r.choice([c for c in (r.randint(0x80, 0xFFFD),) if not 0xD800 <= c <= 0xDFFF] or [0x41])),
        lambda: chr(r.randint(0x10000, 0x1FFFF)),
        lambda: nfc_cluster(r),
    ]
    return "".join(r.choice(pools)() for _ in range(r.randint(1, 30)))


def mixed_case(r, s):
    k = r.random()
    if k < 0.2:
        return s.upper()
    if k < 0.4:
        return s.title()
    if k < 0.55:
        return s.swapcase()
    if k < 0.7:
        return "".join(c.upper() if r.random() < 0.5 else c.lower() for c in s)
    return r.choice(["HeLLo WoRLD", "iPhone", "McDonald's", "NASA", "camelCaseWord", "SCREAMING_SNAKE_CASE",
                     "Title Case Everything", "İI ıi", "STRASSE ß", "ǅungla", "ΣΊΣΥΦΟΣ", "ΑΣ ΣΑΣ", "aΣb", "ΌΣΟΣ."])


CATEGORIES = {
    "punct": lambda r: r.choice(PUNCT_RUNS),
    "contraction": lambda r: r.choice(CONTRACTIONS),
    "number": lambda r: r.choice(NUMBERS),
    "url": lambda r: r.choice(URLS),
    "emoji": lambda r: "".join(r.choice(EMOJI) for _ in range(r.choice([1, 1, 1, 2, 3, 6]))),
    "script": lambda r: r.choice(SCRIPTS),
    "combining": lambda r: r.choice(COMBINING),
    "fullwidth": lambda r: r.choice(FULLWIDTH),
    "accented": lambda r: r.choice(ACCENTED),
    "whitespace": lambda r: r.choice(WHITESPACE),
    "control": lambda r: r.choice(CONTROL),
    "special": lambda r: r.choice(SPECIALS),
    "html": lambda r: r.choice(HTML),
    "repeat": repeated,
    "longword": long_word,
    "soup": soup,
    "nfc": lambda r: "".join(nfc_cluster(r) for _ in range(r.randint(1, 6))),
}


def insert_fragments(r, base, k):
    """Inserts k fragments into base: mostly between words, sometimes glued to a word or mid-word."""
    words = base.split(" ")
    for _ in range(k):
        cat = r.choice(list(CATEGORIES))
        frag = CATEGORIES[cat](r)
        pos = r.randint(0, len(words))
        mode = r.random()
        if mode < 0.6 or not words:
            words.insert(pos, frag)
        elif mode < 0.8:
            i = min(pos, len(words) - 1)
            words[i] = words[i] + frag
        elif mode < 0.9:
            i = min(pos, len(words) - 1)
            words[i] = frag + words[i]
        else:
            i = min(pos, len(words) - 1)
            w = words[i]
            cut = r.randint(0, len(w))
            words[i] = w[:cut] + frag + w[cut:]
    return " ".join(words)


def whitespace_variant(r, s):
    ws = r.choice(WHITESPACE[:24])
    return s.replace(" ", ws) if r.random() < 0.5 else r.choice(WHITESPACE) + s + r.choice(WHITESPACE)


def fixed_prompts():
    """Hand-written edge cases, always in the corpus."""
    out = ["", " ", "  ", "\n", "\t", "\r\n", "\x00", "!", "!!", "a", "A", ".", "'", "'s", "<|endoftext|>",
           "<|startoftext|>", "</s>", "<pad>", "<unk>", "<extra_id_0>", "😀", "猫", "\u3000", "\u200b", "\ufeff",
           "\u0301", "ſ", "İ", "Σ", "ΑΣ", "\u2581", "▁▁", "a cat", "A cat.", "A CAT!!!", "cat'S toy", "cat’s toy"]
    out += [c for c in CONTRACTIONS] + [c for c in SPECIALS] + [c for c in COMBINING] + [c for c in CONTROL]
    out += [c for c in NUMBERS] + [c for c in EMOJI] + [c for c in SCRIPTS] + [c for c in WHITESPACE]
    out += [c for c in FULLWIDTH] + [c for c in ACCENTED] + [c for c in PUNCT_RUNS] + [c for c in HTML]
    out += [f"a{w}b" for w in WHITESPACE] + [f"a{c}b" for c in CONTROL]
    out += [unicodedata.normalize(f, s) for f in ("NFD", "NFKC", "NFKD") for s in ACCENTED[:10] + SCRIPTS[:20]]
    out += ["word " * 74 + "end", "word " * 75 + "end", "word " * 76 + "end", "word " * 254 + "end",
            "word " * 255, "word " * 256, "!" * 75, "!" * 76, "!" * 80, "a!" * 40, "<|endoftext|>" * 80]
    return out


def build_corpus():
    r = random.Random(SEED)
    prompts = list(dict.fromkeys(fixed_prompts()))
    seen = set(prompts)
    while len(prompts) < N_PROMPTS:
        k = r.random()
        if k < 0.22:
            p = english_prompt(r)  # plain prompts of all lengths
        elif k < 0.8:
            p = insert_fragments(r, english_prompt(r), r.choice([1, 1, 2, 2, 3, 5, 8]))
        elif k < 0.86:
            p = mixed_case(r, english_prompt(r))
        elif k < 0.9:
            p = whitespace_variant(r, english_prompt(r, r.randint(1, 3)))
        elif k < 0.93:
            p = unicodedata.normalize(r.choice(["NFD", "NFKD"]), insert_fragments(r, english_prompt(r, 1), 3))
        elif k < 0.95:
            p = " ".join(soup(r) for _ in range(r.randint(1, 4)))
        elif k < 0.97:
            p = " ".join(CATEGORIES["nfc"](r) for _ in range(r.randint(1, 8)))
        elif k < 0.99:
            cat = r.choice(list(CATEGORIES))  # dense runs of one category
            p = " ".join(CATEGORIES[cat](r) for _ in range(r.randint(2, 12)))
        else:
            p = "".join(CATEGORIES[r.choice(list(CATEGORIES))](r) for _ in range(r.randint(2, 12)))
        if p not in seen:
            seen.add(p)
            prompts.append(p)
    for p in prompts:
        p.encode("utf-8")  # no lone surrogates: every prompt is valid UTF-8
    return prompts


# ----------------------------------------------------------------------------------------------------------------
# T5-like tokenizer
# ----------------------------------------------------------------------------------------------------------------
def build_t5_like(tmp: Path):
    botchan = ROOT / ".venv-ref/spm-sdist/botchan.txt"
    if not botchan.is_file():
        sys.exit(f"missing {botchan}: run scripts/reference/setup.sh first")
    shutil.copy(botchan, tmp / "botchan.txt")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        spm.SentencePieceTrainer.train(
            input="botchan.txt", model_prefix="t5like", vocab_size=T5_LIKE_VOCAB, model_type="unigram",
            character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
            unk_piece="<unk>", num_threads=1, shuffle_input_sentence=False, input_sentence_size=0,
            normalization_rule_name="nmt_nfkc", minloglevel=2,
        )
    finally:
        os.chdir(cwd)
    tok = T5TokenizerFast(vocab_file=str(tmp / "t5like.model"), extra_ids=100, model_max_length=512, legacy=True,
                          add_prefix_space=True, from_slow=True)
    tok.save_pretrained(tmp / "t5_like")
    j = json.loads((tmp / "t5_like/tokenizer.json").read_text(encoding="utf-8"))
    assert j["pre_tokenizer"]["type"] == "Metaspace" and j["pre_tokenizer"]["prepend_scheme"] == "always", j
    tiny = json.loads((TINY / "tokenizer_3/tokenizer.json").read_text(encoding="utf-8"))
    charsmap = tiny["normalizer"]["normalizers"][0]["precompiled_charsmap"]
    assert j["normalizer"]["normalizers"][0]["precompiled_charsmap"] == charsmap
    return j, charsmap


def legacy_t5_json(j):
    """The older tokenizer.json layout of the original T5 uploads (same vocabulary). Mirrored in the Rust test."""
    j = json.loads(json.dumps(j))
    j["normalizer"] = j["normalizer"]["normalizers"][0]  # Precompiled only
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True}]}
    j["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True}
    del j["model"]["type"]
    return j


def fast_t5_from_json(tmp: Path, name: str, j):
    d = tmp / name
    d.mkdir(exist_ok=True)
    (d / "tokenizer.json").write_text(json.dumps(j, ensure_ascii=False), encoding="utf-8")
    return T5TokenizerFast(tokenizer_file=str(d / "tokenizer.json"), extra_ids=100 if "like" in name else 0,
                           legacy=True)


# ----------------------------------------------------------------------------------------------------------------
# Reference ids
# ----------------------------------------------------------------------------------------------------------------
def record(tok, prompts, max_len):
    """Per prompt: the non-padding prefix of the pipeline's padded row, and the untruncated length."""
    rows, full = [], []
    pad = tok.pad_token_id
    for p in prompts:
        t = tok([p], padding="max_length", max_length=max_len, truncation=True, add_special_tokens=True)
        ids, mask = t.input_ids[0], t.attention_mask[0]
        assert len(ids) == max_len
        n = sum(mask)
        assert mask == [1] * n + [0] * (max_len - n) and ids[n:] == [pad] * (max_len - n)
        u = tok([p], padding="longest").input_ids[0]
        assert u == ids[:n] if len(u) <= max_len else u[: max_len - 1] == ids[: max_len - 1], (p, u, ids)
        rows.append(ids[:n])
        full.append(len(u))
    return rows, full


def pack(name, rows, full, base_rows=None):
    """`NAME.ids` (U16, rows concatenated), `NAME.len`, `NAME.full_len`; with a base tokenizer, only the rows that
    differ from the base's are stored and `NAME.same_as_base` (U8 [N]) marks the others (len is still stored)."""
    same = [base_rows is not None and r == b for r, b in zip(rows, base_rows or rows)]
    flat = [i for r, s in zip(rows, same) if not s for i in r]
    assert max(flat) < 65536 and min(flat) >= 0
    out = {f"{name}.ids": np.array(flat, dtype=np.uint16),
           f"{name}.len": np.array([len(r) for r in rows], dtype=np.int32),
           f"{name}.full_len": np.array(full, dtype=np.int32)}
    if base_rows is not None:
        out[f"{name}.same_as_base"] = np.array(same, dtype=np.uint8)
    return out


def dump_codepoints(path: Path):
    """Every code point (surrogates excepted) alone and between letters ("a{c}b"), through the five tokenizers
    (untruncated ids with BOS/EOS). Tab-separated lines `cp name ids_alone ids_between`. For the ignored test
    `exhaustive_codepoints` in tests/tokenizer_fuzz.rs (about 15 minutes, 180 MB; not stored in the repository)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        like, _ = build_t5_like(tmp)
        clip = {"clip_l": CLIPTokenizer.from_pretrained(TINY / "tokenizer"),
                "clip_g": CLIPTokenizer.from_pretrained(TINY / "tokenizer_2")}
        fast = {"t5_tiny": T5TokenizerFast.from_pretrained(TINY / "tokenizer_3"),
                "t5_like": fast_t5_from_json(tmp, "t5_like_json", like),
                "t5_like_legacy": fast_t5_from_json(tmp, "t5_like_legacy_json", legacy_t5_json(like))}
        cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
        with open(path, "w", encoding="utf-8") as f:
            for name, tok in clip.items():
                for c in cps:
                    a, b = tok(chr(c)).input_ids, tok(f"a{chr(c)}b").input_ids
                    f.write(f"{c}\t{name}\t{','.join(map(str, a))}\t{','.join(map(str, b))}\n")
                print(name, "done")
            for name, tok in fast.items():
                for k in range(0, len(cps), 65536):
                    chunk = cps[k : k + 65536]
                    a = tok([chr(c) for c in chunk]).input_ids
                    b = tok([f"a{chr(c)}b" for c in chunk]).input_ids
                    for c, x, y in zip(chunk, a, b):
                        f.write(f"{c}\t{name}\t{','.join(map(str, x))}\t{','.join(map(str, y))}\n")
                print(name, "done")


def ccc_table():
    """Prints `UNICODE14_CCC` of src/model/tokenizer.rs: every code point with a non-zero canonical combining class
    in this Python's unicodedata (Unicode 14.0 for Python 3.11), as `HEX[-HEX]:CCC` runs."""
    runs = []
    for c in range(0x110000):
        k = unicodedata.combining(chr(c))
        if k:
            if runs and runs[-1][1] == c - 1 and runs[-1][2] == k:
                runs[-1][1] = c
            else:
                runs.append([c, c, k])
    items = [(f"{a:X}" if a == b else f"{a:X}-{b:X}") + f":{k}" for a, b, k in runs]
    lines, line = [], ""
    for it in items:
        if len(line) + len(it) + 1 > 100:
            lines.append(line)
            line = ""
        line += it + ","
    lines.append(line.rstrip(","))
    print(f"// Generated by scripts/reference/make_tokenizer_fuzz.py --ccc-table (unicodedata {unicodedata.unidata_version}).")
    print('const UNICODE14_CCC: &str = "\\\n' + "\\\n".join(f"    {l}" for l in lines) + '";')


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--codepoints":
        return dump_codepoints(Path(sys.argv[2]))
    if len(sys.argv) == 2 and sys.argv[1] == "--ccc-table":
        return ccc_table()
    try:
        import ftfy  # noqa: F401

        sys.exit("ftfy is installed: CLIPTokenizer would use it instead of BasicTokenizer (ContentV's env has none)")
    except ImportError:
        pass
    prompts = build_corpus()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        like, charsmap = build_t5_like(tmp)
        toks = {
            "clip_l": (CLIPTokenizer.from_pretrained(TINY / "tokenizer"), 77),
            "clip_g": (CLIPTokenizer.from_pretrained(TINY / "tokenizer_2"), 77),
            "t5_tiny": (T5TokenizerFast.from_pretrained(TINY / "tokenizer_3"), 256),
            "t5_like": (fast_t5_from_json(tmp, "t5_like_json", like), 256),
            "t5_like_legacy": (fast_t5_from_json(tmp, "t5_like_legacy_json", legacy_t5_json(like)), 256),
        }
        assert toks["clip_l"][0].fix_text is None and toks["clip_g"][0].fix_text is None
        tensors, meta = {}, {"seed": str(SEED), "n_prompts": str(len(prompts)),
                             "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                             "sentencepiece": spm.__version__, "python_unicode": unicodedata.unidata_version}
        rows = {}
        for name, (tok, max_len) in toks.items():
            rows[name], full = record(tok, prompts, max_len)
            base = BASE.get(name)
            tensors.update(pack(name, rows[name], full, rows[base] if base else None))
            meta[f"{name}.pad"] = str(tok.pad_token_id)
            meta[f"{name}.max_length"] = str(max_len)
            if base:
                meta[f"{name}.base"] = base
            n_diff = sum(r != b for r, b in zip(rows[name], rows[base])) if base else len(prompts)
            print(f"{name}: {sum(map(len, rows[name]))} ids, {sum(f > max_len for f in full)} prompts truncated, "
                  f"{n_diff} rows stored")
        stored = json.loads(json.dumps(like))
        stored["normalizer"]["normalizers"][0]["precompiled_charsmap"] = CHARSMAP_PLACEHOLDER
    with open(OUT / "prompts.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for p in prompts:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    # One metadata key: safetensors writes several in hash order, which would make the file differ between runs.
    save_file(tensors, str(OUT / "ids.safetensors"), metadata={"fuzz": json.dumps(meta, sort_keys=True)})
    (OUT / "t5_like.tokenizer.json").write_text(json.dumps(stored, ensure_ascii=False, separators=(",", ":")) + "\n",
                                                encoding="utf-8")
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"{len(prompts)} prompts; {OUT} holds {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
