"""Curation models: TransNetV2 cuts, PP-OCR text area, LAION-style aesthetics, VLM/LLM."""
