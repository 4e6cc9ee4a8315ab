//! `courier api-key create`: mints a workspace API key the same way the
//! admin route `POST /v1/workspaces/{ws}/api-keys` does (the logic lives in
//! `courier_api::keys`). The plaintext key is returned once and never stored.

use courier_model::WorkspaceId;
use courier_store::{ApiKeyRecord, Store};

pub use courier_api::keys::ApiKeyError;

/// Creates a key for `workspace` (which must exist) and returns the
/// plaintext key, to be shown once, with its stored record.
pub async fn create_api_key(
    store: &Store,
    workspace: &WorkspaceId,
    name: Option<&str>,
) -> Result<(String, ApiKeyRecord), ApiKeyError> {
    courier_api::keys::create_api_key(store, workspace, name).await
}
