//! Creating and changing webhooks. The validation lives in
//! `courier_api::webhooks`, shared by this admin CLI and the API so both
//! refuse the same things with the same field names; re-exported here so the
//! CLI (and its tests) keep their paths.

pub use courier_api::webhooks::{
    NewWebhook, UrlPolicy, WebhookError, WebhookPatch, create, delete, previous_secret_expiry,
    rotate_secret, update,
};
