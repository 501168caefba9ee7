"""The bundled apps, built only on the SDK like any third-party app."""
