"""What people read: the page at ``/``, the OpenAPI document, Swagger UI at ``/docs`` and the guides."""
