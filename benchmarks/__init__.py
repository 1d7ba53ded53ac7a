"""`make bench`: accuracy and speed, measured side by side on the machine at hand."""
