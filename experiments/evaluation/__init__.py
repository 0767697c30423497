"""Evaluation: the TOFU evaluator (``evaluate``), metric glue (``metrics``), tables
(``report``) and plots (``plots``)."""
