"""Array backends. Each sub-package is a plugin that registers one engine; a backend's
framework is imported only when that backend is used."""
