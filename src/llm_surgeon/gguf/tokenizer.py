"""The ``tokenizer.*`` metadata of a GGUF file, copied from a source GGUF or converted from transformers.

A model that came from a GGUF file already has llama.cpp's own description of its tokenizer, which is
copied unchanged (that is the most faithful choice). Otherwise a transformers *fast* tokenizer with a
byte-level BPE model (GPT-2, Llama 3, Qwen2, SmolLM style) is converted; other tokenizer kinds are
refused rather than guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFReader, GGUFValueType, Keys, TokenType

from llm_surgeon.gguf.errors import GGUFExportError


@dataclass(frozen=True)
class MetadataValue:
    """One GGUF key/value with its GGUF type (and element type for arrays)."""

    value: Any
    vtype: GGUFValueType
    sub_type: GGUFValueType | None = None


TokenizerMetadata = dict[str, MetadataValue]


def tokenizer_from_gguf(path: str | Path) -> TokenizerMetadata:
    """Every ``tokenizer.*`` key of a GGUF file, with its original types."""
    reader = GGUFReader(str(path))
    metadata: TokenizerMetadata = {}
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        metadata[key] = MetadataValue(field.contents(), vtype, sub_type)
    if Keys.Tokenizer.LIST not in metadata:
        raise GGUFExportError(f"{path} has no tokenizer (no {Keys.Tokenizer.LIST})")
    return metadata


def pad_vocabulary(metadata: TokenizerMetadata, vocab_size: int) -> TokenizerMetadata:
    """Tokens added up to the model's embedding rows (llama.cpp wants one token per row)."""
    tokens = list(metadata[Keys.Tokenizer.LIST].value)
    if len(tokens) > vocab_size:
        raise GGUFExportError(f"the tokenizer has {len(tokens)} tokens but the model only {vocab_size} embeddings")
    missing = range(len(tokens), vocab_size)
    if not missing:
        return metadata
    padded = dict(metadata)
    padded[Keys.Tokenizer.LIST] = MetadataValue(tokens + [f"[PAD{i}]" for i in missing], GGUFValueType.ARRAY,
                                                GGUFValueType.STRING)
    extra = {Keys.Tokenizer.TOKEN_TYPE: int(TokenType.UNUSED), Keys.Tokenizer.SCORES: -1000.0}
    for key, fill in extra.items():
        if key in metadata:
            old = metadata[key]
            padded[key] = MetadataValue(list(old.value) + [fill] * len(missing), old.vtype, old.sub_type)
    return padded


def _flat_pre_tokenizers(node: dict | None) -> list[dict]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [p for child in node.get("pretokenizers", []) for p in _flat_pre_tokenizers(child)]
    return [node]


def detect_pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for the text splitting done before BPE, recognised from its parts.

    Unknown splitters give ``default`` (token ids fed directly, as in evaluation, are unaffected).
    """
    parts = _flat_pre_tokenizers(tokenizer_json.get("pre_tokenizer"))
    kinds = [p.get("type") for p in parts]
    regexes = [str((p.get("pattern") or {}).get("Regex", "")) for p in parts if p.get("type") == "Split"]
    byte_level_regex = any(p.get("type") == "ByteLevel" and p.get("use_regex", True) for p in parts)
    if kinds == ["ByteLevel"] and byte_level_regex:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and byte_level_regex:
        return "smollm"
    if len(regexes) == 1 and not byte_level_regex:
        if r"\p{N}{1,3}" in regexes[0]:
            return "llama-bpe"
        if r"\p{N}|" in regexes[0]:
            return "qwen2"
    return "default"


def _byte_level_bpe(tokenizer) -> dict:
    """The tokenizer.json of a fast byte-level BPE tokenizer, or a refusal naming what is supported."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    data = json.loads(backend.to_str()) if backend is not None else {}
    model = data.get("model") or {}
    byte_level = "ByteLevel" in json.dumps(data.get("pre_tokenizer")) + json.dumps(data.get("decoder"))
    if model.get("type") != "BPE" or not byte_level:
        raise GGUFExportError("only byte-level BPE tokenizers (GPT-2/Llama 3/Qwen2 style) can be converted; "
                              "pass the model's GGUF file as the tokenizer source instead")
    return data


def _token_table(data: dict, size: int) -> tuple[list[str], list[int]]:
    """Tokens by id and their llama.cpp types (control for special added tokens, unused for holes)."""
    tokens, types = [f"[PAD{i}]" for i in range(size)], [int(TokenType.UNUSED)] * size
    for token, index in data["model"]["vocab"].items():
        tokens[index], types[index] = token, int(TokenType.NORMAL)
    for added in data.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = int(TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED)
    return tokens, types


def _special_ids(tokenizer) -> TokenizerMetadata:
    """bos/eos/unk/pad ids, and whether encoding adds bos/eos (observed, not read from flags)."""
    metadata: TokenizerMetadata = {}
    names = {"bos": Keys.Tokenizer.BOS_ID, "eos": Keys.Tokenizer.EOS_ID, "unk": Keys.Tokenizer.UNK_ID,
             "pad": Keys.Tokenizer.PAD_ID}
    for name, key in names.items():
        index = getattr(tokenizer, f"{name}_token_id", None)
        if index is not None:
            metadata[key] = MetadataValue(int(index), GGUFValueType.UINT32)
    sample = tokenizer.encode("a")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    adds_bos, adds_eos = bos is not None and sample[:1] == [bos], eos is not None and sample[-1:] == [eos]
    metadata[Keys.Tokenizer.ADD_BOS] = MetadataValue(adds_bos, GGUFValueType.BOOL)
    metadata[Keys.Tokenizer.ADD_EOS] = MetadataValue(adds_eos, GGUFValueType.BOOL)
    return metadata


def tokenizer_from_hf(tokenizer) -> TokenizerMetadata:
    """llama.cpp's ``gpt2`` tokenizer metadata converted from a transformers fast BPE tokenizer."""
    data = _byte_level_bpe(tokenizer)
    ids = list(data["model"]["vocab"].values()) + [a["id"] for a in data.get("added_tokens", [])]
    tokens, types = _token_table(data, max(ids) + 1)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    metadata: TokenizerMetadata = {
        Keys.Tokenizer.MODEL: MetadataValue("gpt2", GGUFValueType.STRING),
        Keys.Tokenizer.PRE: MetadataValue(detect_pre_tokenizer(data), GGUFValueType.STRING),
        Keys.Tokenizer.LIST: MetadataValue(tokens, GGUFValueType.ARRAY, GGUFValueType.STRING),
        Keys.Tokenizer.TOKEN_TYPE: MetadataValue(types, GGUFValueType.ARRAY, GGUFValueType.INT32),
        Keys.Tokenizer.MERGES: MetadataValue(merges, GGUFValueType.ARRAY, GGUFValueType.STRING),
    }
    metadata.update(_special_ids(tokenizer))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        metadata[Keys.Tokenizer.CHAT_TEMPLATE] = MetadataValue(template, GGUFValueType.STRING)
    return metadata


def tokenizer_metadata(source, vocab_size: int) -> TokenizerMetadata:
    """Tokenizer metadata from a ``.gguf`` path, a transformers tokenizer, or a folder/name to load one from."""
    if isinstance(source, str | Path) and str(source).endswith(".gguf"):
        metadata = tokenizer_from_gguf(source)
    else:
        if isinstance(source, str | Path):
            from transformers import AutoTokenizer

            source = AutoTokenizer.from_pretrained(str(source))
        metadata = tokenizer_from_hf(source)
    return pad_vocabulary(metadata, vocab_size)
