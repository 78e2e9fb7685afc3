mod common;

#[tokio::test]
async fn smoke() { let s = common::TestServer::start().await; let _ = s.url("/"); }
