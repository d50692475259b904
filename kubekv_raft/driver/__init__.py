"""What drives the core: the asyncio Runner and the durable log storage."""
