"""Curation models: TransNetV2 shot boundaries, PP-OCR text area, LAION-style aesthetics, VLM/LLM."""
