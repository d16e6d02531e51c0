//! A job run: local mode and worker pods, coordinator and control API.
