fn main() {
    std::process::exit(shadowmesh::cli::run(std::env::args().collect()));
}
