"""Optional integrations (``pip install coordinator[agents]`` for the OpenAI Agents SDK)."""
