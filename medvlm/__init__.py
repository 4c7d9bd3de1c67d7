"""medvlm: research-only VLM readings of medical imaging studies, with auditable reports."""

__version__ = "0.1.0"

RESEARCH_BANNER = "RESEARCH USE ONLY — NOT FOR CLINICAL DIAGNOSIS"
DISCLAIMER = (
    "This report was produced automatically by a vision-language model for research purposes. "
    "It has not been reviewed by a clinician and must not be used for diagnosis or treatment."
)
DEMO_NOTICE = "demo model — random weights — text is meaningless"
PHANTOM_NOTICE = "phantom model — trained only on synthetic phantoms — its text says nothing about real images"
