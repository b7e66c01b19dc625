//! Environment variables override the config file's keys (`TRUNKLINE_GATEWAY_<KEY>`, `__`
//! into tables). Its own test binary: it changes this process's environment.

#[test]
fn environment_overrides_the_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/switch-gateway.example.toml");
    // SAFETY: this test binary has one test, so no other thread reads the environment.
    unsafe {
        std::env::set_var("TRUNKLINE_GATEWAY_RING_TIMEOUT_SECS", "7");
        std::env::set_var("TRUNKLINE_GATEWAY_ID", "branch");
        std::env::set_var("TRUNKLINE_GATEWAY_SIP_TLS__LISTEN", "127.0.0.1:5061");
        std::env::set_var("TRUNKLINE_GATEWAY_SIP_TLS__CERT_FILE", "/tmp/c.pem");
        std::env::set_var("TRUNKLINE_GATEWAY_SIP_TLS__KEY_FILE", "/tmp/k.pem");
    }
    let cfg = switch_gateway::Config::load(Some(std::path::Path::new(path))).expect("loads");
    assert_eq!((cfg.ring_timeout_secs, cfg.id.as_str()), (7, "branch"));
    assert_eq!(cfg.sip_tls.unwrap().listen.port(), 5061);
    unsafe {
        std::env::set_var("TRUNKLINE_GATEWAY_RTP_PORTS", "9-3");
    }
    assert!(
        switch_gateway::Config::load(Some(std::path::Path::new(path))).is_err(),
        "bad values from the environment are refused too"
    );
    // A removed key set from the environment is refused with its reason, naming the variable.
    unsafe {
        std::env::set_var("TRUNKLINE_GATEWAY_RTP_PORTS", "20000-20999");
        std::env::set_var("TRUNKLINE_GATEWAY_ADVERTISE_URL", "ws://203.0.113.7:7443/direct");
    }
    let err = switch_gateway::Config::load(Some(std::path::Path::new(path))).expect_err("a removed key from the environment");
    let text = err.to_string();
    assert!(text.contains("`advertise_url` was removed") && text.contains("TRUNKLINE_GATEWAY_ADVERTISE_URL"), "{text}");
}
