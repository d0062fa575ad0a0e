"""Operating the stream: load tables into Redis, replay events into Kafka, the end-to-end demo."""
