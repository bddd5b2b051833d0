//! The network capability (`wasi:http`): grants by `scheme://host:port`, and the check
//! after DNS that keeps loopback and link-local (metadata) addresses out unless granted
//! by name. A real HTTP server (Python's http.server) on 127.0.0.1.

use crate::support::{self, Server, hoist, plugins, run};

fn serve(dir: &std::path::Path) -> Server {
    support::http_server(dir)
}

#[test]
fn loopback_needs_a_grant_by_name_even_with_net_star() {
    let (_t, dir) = support::tempdir();
    std::fs::write(dir.join("hello.txt"), "hello over wasi:http").unwrap();
    let server = serve(&dir);
    let port = server.1;
    let fetch = |url: String, allow: &[&str]| {
        let mut c = hoist(&dir);
        c.current_dir(&dir)
            .args(["step", "run", plugins::FETCHER, "-i"])
            .arg(format!("url={url}"));
        for a in allow {
            c.args(["--allow", a]);
        }
        run(&mut c)
    };

    let (code, _, err) = fetch(format!("http://127.0.0.1:{port}/hello.txt"), &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("needs capability `net:*`, which was not granted"),
        "{err}"
    );

    let (code, _, err) = fetch(format!("http://127.0.0.1:{port}/hello.txt"), &["net:*"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("was denied: step `fetcher` (fetcher) may not reach http://127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains(&format!("resolves to 127.0.0.1, an address of this machine or of a private network (loopback, link-local or metadata, private, shared, or one of its own); grant it by name to allow it: `--allow net:http://127.0.0.1:{port}`")), "{err}");

    // A DNS name that resolves to loopback is caught the same way.
    let (code, _, err) = fetch(format!("http://localhost:{port}/hello.txt"), &["net:*"]);
    assert_eq!(code, 1);
    assert!(err.contains("`localhost` resolves to"), "{err}");

    // Granted by name: allowed.
    let grant = format!("net:http://127.0.0.1:{port}");
    let (code, out, err) = fetch(
        format!("http://127.0.0.1:{port}/hello.txt"),
        &["net:*", &grant],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["body"], "hello over wasi:http");

    // Granted by name: the connection goes to the address that was checked (no second
    // lookup), and the server still sees the name in the Host header.
    let echo = {
        let port = support::free_port();
        let mut cmd = std::process::Command::new("python3");
        cmd.arg("-c").arg(format!(
            "import http.server as h\n\
             class H(h.BaseHTTPRequestHandler):\n    \
             def do_GET(s):\n        \
             b = s.headers['Host'].encode(); s.send_response(200)\n        \
             s.send_header('Content-Length', str(len(b))); s.end_headers(); s.wfile.write(b)\n\
             h.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
        ));
        Server::start(cmd, port, "a Host-echoing server")
    };
    let grant = format!("net:http://localhost:{}", echo.1);
    let (code, out, err) = fetch(format!("http://localhost:{}/", echo.1), &["net:*", &grant]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["body"], format!("localhost:{}", echo.1));
}

/// The fetcher on `url`, granted `net:*` and the URL's origin by name.
fn fetch_granted(dir: &std::path::Path, url: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let origin = url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
    let mut c = hoist(dir);
    c.current_dir(dir)
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .args(["step", "run", plugins::FETCHER, "-i"])
        .arg(format!("url={url}"))
        .args(["--allow", "net:*", "--allow"])
        .arg(format!("net:{origin}"));
    for (k, v) in env {
        c.env(k, v);
    }
    run(&mut c)
}

/// HTTPS goes to the address the policy checked, verified against the request's name,
/// and trusts a private CA named by `SSL_CERT_FILE` (an internal MinIO, say).
#[test]
fn https_trusts_a_private_ca_from_ssl_cert_file() {
    let (_t, dir) = support::tempdir();
    std::fs::write(dir.join("hello.txt"), "hello over https").unwrap();
    let server = support::private_ca_server(&dir);
    let url = format!("https://localhost:{}/hello.txt", server.1);
    let (code, _, err) = fetch_granted(&dir, &url, &[]);
    assert_eq!(code, 1, "an unknown CA is not trusted: {err}");
    let ca = dir.join("ca.pem").display().to_string();
    let (code, out, err) = fetch_granted(&dir, &url, &[("SSL_CERT_FILE", &ca)]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["body"], "hello over https");
}

/// `HTTPS_PROXY` is honoured with a `CONNECT` tunnel (TLS still verified end to end), and
/// `NO_PROXY` exempts a host.
#[test]
fn https_goes_through_the_proxy_the_environment_names() {
    let (_t, dir) = support::tempdir();
    std::fs::write(dir.join("hello.txt"), "hello through a proxy").unwrap();
    let server = support::private_ca_server(&dir);
    // A real proxy: Debian's tinyproxy, tunnelling only to the server's port.
    let Some((_proxy, via, log)) = support::tinyproxy(&dir, &format!("ConnectPort {}\n", server.1))
    else {
        return;
    };
    let url = format!("https://localhost:{}/hello.txt", server.1);
    let ca = dir.join("ca.pem").display().to_string();
    let (code, out, err) =
        fetch_granted(&dir, &url, &[("SSL_CERT_FILE", &ca), ("HTTPS_PROXY", &via)]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["body"], "hello through a proxy");
    let seen = support::proxy_requests(&log);
    assert_eq!(seen, [format!("CONNECT localhost:{} HTTP/1.1", server.1)]);

    let (code, _, err) = fetch_granted(
        &dir,
        &url,
        &[
            ("SSL_CERT_FILE", &ca),
            ("HTTPS_PROXY", &via),
            ("NO_PROXY", "example.com,localhost"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        support::proxy_requests(&log),
        seen,
        "NO_PROXY: straight to the server"
    );
}
