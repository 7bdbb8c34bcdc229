"""The embedded default model, installed as package data `stemsplit.weights` (see README.md here)."""
