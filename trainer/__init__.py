"""owtgpt trainer package."""
