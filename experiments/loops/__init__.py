"""Training loops: fine-tuning (``finetune``), unlearning (``unlearn``), the loss registry
(``losses``), the optimizer registry (``optimizers``) and checkpoints (``checkpoint``)."""
