"""owtgpt model package."""
