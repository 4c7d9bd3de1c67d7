"""Ingest: find studies in a batch folder and turn them into model-ready images plus context.

discover() streams StudyRef/StudyError (headers only); load_study() decodes one study;
resolve_modality() picks the prompt template; load_or_create_key() holds the study-key secret.
"""

from .discover import check_studies_folder, discover
from .load import load_study
from .privacy import load_or_create_key
from .route import UnsupportedModality, resolve_modality

__all__ = ["discover", "check_studies_folder", "load_study", "resolve_modality", "load_or_create_key", "UnsupportedModality"]
