"""Where deltas go: lake stores (file://, s3://) and the publish protocol."""
