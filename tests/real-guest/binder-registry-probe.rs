//! A host service for `real-guest --binder`: registers host port PORT with the plugin's
//! IHostServiceRegistry at URI (kernel binder in the guest) and answers every guest connection with
//! one end of a socketpair whose other end echoes in upper case. Prints `REGISTERED id=<n>`, then
//! serves until killed (SIGKILL → the plugin must see the death).
//!
//! Not part of the workspace (the tests crate has no normal dependency on vsock-plugin-ipc):
//! `tests/real-guest/run --binder` builds it statically from a scratch crate in the cache that
//! depends on `ipc/` by path.
//!
//! usage: binder-registry-probe URI PORT

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use vsock_plugin_ipc::host::HostService;
use vsock_plugin_ipc::platform::ControlUri;

fn echo_upper() -> Result<UnixStream, String> {
    let (mine, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let mut mine = mine;
        let mut buf = [0u8; 4096];
        loop {
            match mine.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let up: Vec<u8> = buf[..n].iter().map(|b| b.to_ascii_uppercase()).collect();
                    if mine.write_all(&up).is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(theirs)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: binder-registry-probe URI PORT");
        std::process::exit(2);
    }
    let uri = match ControlUri::parse(&args[1]) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("probe: bad URI: {e:?}");
            std::process::exit(2);
        }
    };
    let port: u32 = args[2].parse().expect("port");
    let svc = HostService::register(&uri, port, None, "binder-probe", |req| {
        println!(
            "CONNECT cid={} guest_port={} host_port={}",
            req.guestCid, req.guestPort, req.hostPort
        );
        echo_upper()
    });
    match svc {
        Ok(s) => {
            println!("REGISTERED id={}", s.id());
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        Err(e) => {
            println!("REGISTER FAILED {e:?}");
            std::process::exit(1);
        }
    }
}
