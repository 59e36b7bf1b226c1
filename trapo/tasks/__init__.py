"""Built-in task and tiny local model for the demo and the tests."""
