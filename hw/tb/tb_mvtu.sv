// Unit-test wrapper: bnnc_mvtu with in_data = {row, col, vector}.
module tb_mvtu #(
    parameter int MH = 4,
    parameter int MW = 8,
    parameter int PE = 2,
    parameter int SIMD = 4,
    parameter int IB = 1,
    parameter int SB = 8,
    parameter int NT = 1,
    parameter int TB = 8,
    parameter int AB = 8,
    parameter int GAIN = -2,
    parameter int NCLS = 1,
    parameter int NX = 1,
    parameter int OHR = 1,
    parameter int OWC = 1,
    parameter int YB = 1,
    parameter int XB = 1,
    parameter logic [OHR*YB-1:0] YCLS = '0,
    parameter logic [OWC*XB-1:0] XCLS = '0,
    parameter WFILE = "w.mem",
    parameter TFILE = "t.mem",
    parameter int LB = 0,
    parameter int LS = 1,
    parameter int OB = NT == 0 ? AB : $clog2(NT + 1),
    localparam int RB = OHR > 1 ? $clog2(OHR) : 1,
    localparam int CB = OWC > 1 ? $clog2(OWC) : 1
) (
    input  logic                   clk,
    input  logic                   rst_n,
    input  logic                   in_valid,
    output logic                   in_ready,
    input  logic [RB+CB+MW*IB-1:0] in_data,
    output logic                   out_valid,
    input  logic                   out_ready,
    output logic [      MH*OB-1:0] out_data
);
  bnnc_mvtu #(
      .MH(MH), .MW(MW), .PE(PE), .SIMD(SIMD), .IB(IB), .SB(SB), .NT(NT), .TB(TB), .AB(AB),
      .GAIN(GAIN), .NCLS(NCLS), .NX(NX), .OHR(OHR), .OWC(OWC), .YB(YB), .XB(XB),
      .YCLS(YCLS), .XCLS(XCLS), .WFILE(WFILE), .TFILE(TFILE), .LB(LB), .LS(LS), .OB(OB)
  ) dut (
      .clk(clk), .rst_n(rst_n), .in_valid(in_valid), .in_ready(in_ready),
      .in_data(in_data[MW*IB-1:0]), .in_row(in_data[RB+CB+MW*IB-1-:RB]), .in_col(in_data[CB+MW*IB-1-:CB]),
      .out_valid(out_valid), .out_ready(out_ready), .out_data(out_data)
  );
endmodule
