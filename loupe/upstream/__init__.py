"""Generation on an OpenAI-compatible engine behind Loupe (BACKEND=openai): an HTTP client, no torch."""
