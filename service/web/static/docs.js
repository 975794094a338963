// Swagger UI at /docs/, from the flask-swagger-ui wheel's files, started here rather than by an inline script so
// that the page runs under a Content-Security-Policy with script-src 'self'.
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "../openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    tryItOutEnabled: true,
    validatorUrl: null, // no badge from validator.swagger.io: the page loads nothing from elsewhere
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout",
  });
});
