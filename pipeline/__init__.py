"""owtgpt pipeline package."""
