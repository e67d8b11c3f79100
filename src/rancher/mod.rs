//! Rancher v3 API client (reqwest).
