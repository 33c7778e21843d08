"""leadrouter: event-driven lead qualification and routing on Kafka."""

__version__ = "0.1.0"
