"""Learn a small CLIP-style byte-level BPE vocabulary from the caption words.

The vocabulary has the same layout as CLIP's: the 256 byte symbols, the same symbols with the
end-of-word marker ``</w>``, one token per learned merge, then ``<|startoftext|>`` and
``<|endoftext|>``. Merges are learned greedily from word frequencies in the captions (classic
BPE), so frequent caption words become single tokens while any other text still tokenizes into
byte symbols. The files load with ``transformers.CLIPTokenizer``.
"""

import json
import logging
import re
from collections import Counter
from pathlib import Path

from transformers import CLIPTokenizer

from . import paths

log = logging.getLogger(__name__)

MAX_MERGES = 1500
MIN_PAIR_COUNT = 2
MODEL_MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# CLIP's pre-tokenizer pattern, restricted to what can occur after lower-casing.
_WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _symbols(word: str, table: dict[int, str]) -> tuple[str, ...]:
    chars = [table[b] for b in word.encode("utf-8")]
    return (*chars[:-1], chars[-1] + "</w>")


def learn_bpe(captions: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and ordered merges learned from ``captions``."""
    table = bytes_to_unicode()
    words = Counter()
    for caption in captions:
        for word in _WORD.findall(caption.lower()):
            words[_symbols(word, table)] += 1
    words = dict(words)
    merges: list[tuple[str, str]] = []
    while len(merges) < MAX_MERGES:
        pairs = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best, count = pairs.most_common(1)[0]
        if count < MIN_PAIR_COUNT:
            break
        merges.append(best)
        joined = best[0] + best[1]
        merged = {}
        for symbols, n in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        words = merged
    base = list(table.values())
    tokens = base + [c + "</w>" for c in base] + [a + b for a, b in merges] + [BOS, EOS]
    vocab = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def build(captions: list[str], folder: Path = paths.DEFAULT.tokenizer) -> CLIPTokenizer:
    """Write vocab.json/merges.txt learned from ``captions`` into ``folder`` (once); load them."""
    if not (folder / "vocab.json").exists():
        vocab, merges = learn_bpe(captions)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
        (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        log.info("tokenizer: %d tokens, %d merges", len(vocab), len(merges))
    return CLIPTokenizer.from_pretrained(folder, model_max_length=MODEL_MAX_LENGTH)
