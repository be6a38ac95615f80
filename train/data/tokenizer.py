"""Tokenizers for text sources: raw bytes (vocab 256, byte 0 ends a document) or SentencePiece."""

import numpy as np

BYTE_VOCAB = 256
BYTE_EOS = 0


class ByteTokenizer:
  vocab_size = BYTE_VOCAB
  eos_id = BYTE_EOS

  def encode(self, text: bytes | str) -> np.ndarray:
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return np.frombuffer(data, np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    return bytes(int(i) for i in ids if 0 < int(i) < 256).decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  def __init__(self, model_path: str):
    import sentencepiece

    self._sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else 0

  def encode(self, text: bytes | str) -> np.ndarray:
    text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
    return np.asarray(self._sp.encode(text), np.int32)

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in ids])


def get_tokenizer(spm_model: str = ""):
  """Bytes by default; a SentencePiece model when a path is given."""
  return SentencePieceTokenizer(spm_model) if spm_model else ByteTokenizer()
