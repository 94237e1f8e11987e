"""The four-phase training pipeline on Agent Lightning 0.3 (gather, SFT, GRPO, bandit)."""
