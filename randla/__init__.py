"""randla: randomized numerical linear algebra on any array-API array."""
