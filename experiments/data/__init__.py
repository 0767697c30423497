"""Data: QA records and corpora (``corpus``), the generated corpus (``synthetic``), real
TOFU (``tofu``), the local BPE tokenizer (``tokenizer``) and fixed-shape batches (``batching``)."""
