"""The InternLM2 tokenizer of Sa2VA-8B/26B checkpoints, without their remote code.

Official directories ship ``tokenizer.model`` (sentencepiece) and name ``InternLM2Tokenizer`` from
remote code that transformers 5 cannot run (models.md 3.12). This reproduces that slow tokenizer's
ids and decoded text: ``encode`` prepends ``<s>`` and splits the text on the added tokens before
sentencepiece sees it; ``decode`` joins added tokens with spaces around them, as the slow
tokenizer's ``decode(skip_special_tokens=False)`` does (e.g. ``"Sure, [SEG] . <|im_end|>"``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_SPIECE_UNDERLINE = "\u2581"
# PreTrainedTokenizer.clean_up_tokenization, which InternLM2Tokenizer applies to every decoded run.
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class InternLM2Tokenizer:
    def __init__(self, directory: str | Path):
        import sentencepiece as spm

        directory = Path(directory)
        self.sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
        config = json.loads((directory / "tokenizer_config.json").read_text())
        self.add_bos_token = bool(config.get("add_bos_token", True))
        base = self.sp.get_piece_size()
        self._added: dict[int, str] = {}
        for key, entry in (config.get("added_tokens_decoder") or {}).items():
            if int(key) >= base:
                self._added[int(key)] = entry["content"]
        extra = directory / "added_tokens.json"
        if extra.is_file():
            self._added.update({int(i): t for t, i in json.loads(extra.read_text()).items() if int(i) >= base})
        self._added_ids = {t: i for i, t in self._added.items()}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in sorted(self._added_ids, key=len, reverse=True))
                                 + ")") if self._added_ids else None
        self.bos_token_id = self.sp.bos_id()
        self.eos_token_id = self.sp.eos_id()
        self.unk_token_id = self.sp.unk_id()
        self.pad_token_id = self.eos_token_id
        self.eos_token = self.sp.id_to_piece(self.eos_token_id)
        self._specials = {self.sp.id_to_piece(i) for i in (self.bos_token_id, self.eos_token_id, self.unk_token_id)}
        self._no_prefix_space = {i for i in range(base) if not self.sp.id_to_piece(i).startswith(_SPIECE_UNDERLINE)}

    def __len__(self) -> int:
        return self.sp.get_piece_size() + len(self._added)

    def get_added_vocab(self) -> dict[str, int]:
        return dict(self._added_ids)

    def convert_tokens_to_ids(self, token: str) -> int:
        if token in self._added_ids:
            return self._added_ids[token]
        return self.sp.piece_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self.bos_token_id] if add_special_tokens and self.add_bos_token else []
        chunks = self._split.split(text) if self._split else [text]
        for chunk in chunks:
            if not chunk:
                continue
            if chunk in self._added_ids:
                ids.append(self._added_ids[chunk])
            else:
                ids.extend(self.sp.encode(chunk))
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        parts: list[str] = []
        run: list[int] = []
        for i in (int(x) for x in ids):
            if i in self._added:
                if run:
                    text = self._decode_run(run, skip_special_tokens)
                    if text:
                        parts.append(text)
                    run = []
                if not skip_special_tokens:
                    parts.append(self._added[i])
            else:
                run.append(i)
        if run:
            parts.append(self._decode_run(run, skip_special_tokens))
        return " ".join(parts)

    def _decode_run(self, ids: list[int], skip_special_tokens: bool) -> str:
        # InternLM2Tokenizer.convert_tokens_to_string: special pieces bypass sentencepiece, a space
        # is added in front of a run that starts with a word piece, and the first character dropped.
        if skip_special_tokens:
            ids = [i for i in ids if self.sp.id_to_piece(i) not in self._specials]
            if not ids:
                return ""
        out, pending, prev_special = "", [], False
        for i in ids:
            piece = self.sp.id_to_piece(i)
            if piece in self._specials:
                if not prev_special:
                    out += " "
                out += self.sp.decode(pending) + piece
                prev_special, pending = True, []
            else:
                pending.append(i)
                prev_special = False
        out += self.sp.decode(pending)
        for old, new in _CLEAN_UP:
            out = out.replace(old, new)
        if ids[0] not in self._no_prefix_space:
            out = " " + out
        return out[1:]
