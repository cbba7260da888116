"""In-process simulators of hardware buses, so code runs and is tested without hardware."""
