"""The HTTP API. The engine decides; the API only parses requests and translates answers.

* ``routes``: the service and receipt routers, and ``POST /execute``;
* ``problems``: problem+json error answers and the handlers that render every error as one;
* ``docs``: the OpenAPI document's error answers, and offline ``/docs`` and ``/redoc``;
* ``middleware``: the request body limit, and HEAD answered as GET.
"""
