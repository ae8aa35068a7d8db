// Starts Swagger UI on /docs. A file rather than an inline script, so the docs page's
// Content-Security-Policy can allow scripts from this server only.
"use strict";
window.ui = SwaggerUIBundle({
  url: document.currentScript.dataset.openapi,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null, // no validator badge: it would send the API description to an outside service
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
