"""Signal analysis and plots."""
